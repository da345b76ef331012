#include "vduse/sigbus_guard.h"

#include <atomic>
#include <csignal>
#include <cstdint>
#include <mutex>
#include <sys/mman.h>

namespace vb::vduse::sigbus_guard {
namespace {

// Every mapped IOTLB region of every device. 4096 is far above what a device maps (a handful of
// guest RAM ranges, or one bounce buffer and a few ring pages).
constexpr int kSlots = 4096;

struct Slot {
  std::atomic<bool> used{false};
  std::atomic<std::uintptr_t> begin{0};
  std::atomic<std::uintptr_t> end{0};
  std::atomic<bool> poisoned{false};
};

Slot g_slots[kSlots];
std::atomic<unsigned long> g_caught{0};
struct sigaction g_previous;
std::once_flag g_installed;

void on_sigbus(int sig, siginfo_t *info, void *uctx) {
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  for (Slot &s : g_slots) {
    if (!s.used.load(std::memory_order_acquire))
      continue;
    const std::uintptr_t b = s.begin.load(std::memory_order_relaxed);
    const std::uintptr_t e = s.end.load(std::memory_order_relaxed);
    if (addr < b || addr >= e)
      continue;
    // mmap is a plain system call: safe here. Replacing the whole range at once means the
    // device faults once, not once per page.
    void *p = ::mmap(reinterpret_cast<void *>(b), e - b, PROT_READ | PROT_WRITE,
                     MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      break;
    s.poisoned.store(true, std::memory_order_release);
    g_caught.fetch_add(1, std::memory_order_relaxed);
    return; // the faulting instruction runs again, on scratch memory
  }
  // Not a guest memory fault: hand it to whoever handled SIGBUS before us.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction) {
      g_previous.sa_sigaction(sig, info, uctx);
      return;
    }
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  (void)::signal(SIGBUS, SIG_DFL); // the access faults again and the default action runs
}

void install() noexcept {
  struct sigaction sa {};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, &g_previous);
}

} // namespace

int add(void *addr, std::size_t len) noexcept {
  std::call_once(g_installed, install);
  // Adds and removes are rare (one per mapping) and serialized; the handler only reads, and
  // sees a slot once it is published with its range filled in.
  static std::mutex claim;
  std::lock_guard lock(claim);
  for (int i = 0; i < kSlots; ++i) {
    Slot &s = g_slots[i];
    if (s.used.load(std::memory_order_relaxed))
      continue;
    s.begin.store(reinterpret_cast<std::uintptr_t>(addr), std::memory_order_relaxed);
    s.end.store(reinterpret_cast<std::uintptr_t>(addr) + len, std::memory_order_relaxed);
    s.poisoned.store(false, std::memory_order_relaxed);
    s.used.store(true, std::memory_order_release);
    return i;
  }
  return -1;
}

void remove(int slot) noexcept {
  if (slot < 0 || slot >= kSlots)
    return;
  g_slots[slot].used.store(false, std::memory_order_release);
}

bool poisoned(int slot) noexcept {
  return slot >= 0 && slot < kSlots && g_slots[slot].poisoned.load(std::memory_order_acquire);
}

unsigned long caught() noexcept { return g_caught.load(std::memory_order_relaxed); }

} // namespace vb::vduse::sigbus_guard
