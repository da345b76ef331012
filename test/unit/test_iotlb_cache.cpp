// The IOTLB map cache over real shared memory: memfds stand in for what VDUSE_IOTLB_GET_FD
// hands out (the kernel's bounce buffer, or a VMM's guest memory file with vhost-vdpa).
#include "vduse/iotlb_cache.h"
#include "vduse/sigbus_guard.h"

#include <doctest/doctest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

namespace {

constexpr std::uint64_t kIova = 0x100000;
constexpr std::size_t kSize = 1 << 20;

// One memfd as the only region, [kIova, kIova + kSize), read-write.
struct GuestFile {
  GuestFile() : fd(::memfd_create("guest", MFD_CLOEXEC)) {
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, kSize) == 0);
  }
  ~GuestFile() { ::close(fd); }
  vb::vduse::IotlbCache::RegionSource source() {
    return [this](vduse_iotlb_entry &e) {
      ++lookups;
      if (e.start < kIova || e.start >= kIova + kSize)
        return -1;
      e.start = kIova;
      e.last = kIova + kSize - 1;
      e.offset = 0;
      e.perm = VDUSE_ACCESS_RW;
      return ::dup(fd);
    };
  }
  void fill(char c) {
    std::string bytes(kSize, c);
    REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
  }
  int fd;
  int lookups = 0;
};

std::size_t mappings_in_process() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);)
    ++n;
  return n;
}

} // namespace

// Issue 12, item 1: a request in flight keeps the mapping it was given; retiring it must not
// swap in other bytes (a zero-copy write not yet sent would send zeros).
TEST_CASE("iotlb: a mapping retired while pinned keeps its contents until unpinned, then it is unmapped") {
  GuestFile g;
  g.fill('a');
  vb::vduse::IotlbCache cache(g.source());
  const std::uint64_t pin = cache.pin();
  auto *p = static_cast<char *>(cache.map_contiguous(kIova + 4096, 4096, false));
  cache.invalidate(0, UINT64_MAX); // UPDATE_IOTLB over everything
  CHECK(cache.cached_regions() == 0);
  CHECK(cache.retired_regions() == 1);
  CHECK(std::string(p, 4096) == std::string(4096, 'a'));
  // A new lookup asks the kernel again.
  CHECK(cache.map_contiguous(kIova, 16, false) != nullptr);
  CHECK(g.lookups == 2);
  cache.unpin(pin);
  CHECK(cache.retired_regions() == 0);
}

// Item 3: each reset or full invalidation retires a region as large as the guest's RAM; with
// no pin left it must go at once, or a guest cycling its status exhausts the address space.
TEST_CASE("iotlb: resets in a loop leave no retired mapping behind") {
  GuestFile g;
  vb::vduse::IotlbCache cache(g.source());
  REQUIRE(cache.map_contiguous(kIova, 16, true) != nullptr);
  const std::size_t before = mappings_in_process();
  for (int i = 0; i < 2000; ++i) {
    const std::uint64_t pin = cache.pin();
    REQUIRE(cache.map_contiguous(kIova + 64, 16, true) != nullptr);
    cache.reset();
    cache.unpin(pin);
    REQUIRE(cache.map_contiguous(kIova, 16, true) != nullptr);
    cache.invalidate(kIova, kIova);
  }
  CHECK(cache.retired_regions() == 0);
  CHECK(mappings_in_process() <= before + 16); // 2000 without the fix; a sanitizer may add a few
}

// Pins of several epochs: a region retired in one epoch is needed only by pins taken before.
TEST_CASE("iotlb: a retired region goes when the last pin from before its retirement is released") {
  GuestFile g;
  vb::vduse::IotlbCache cache(g.source());
  const std::uint64_t old_pin = cache.pin();
  REQUIRE(cache.map_contiguous(kIova, 16, false) != nullptr);
  cache.reset();
  const std::uint64_t new_pin = cache.pin(); // taken after: cannot see the retired region
  REQUIRE(cache.map_contiguous(kIova, 16, false) != nullptr);
  CHECK(cache.retired_regions() == 1);
  cache.unpin(old_pin);
  CHECK(cache.retired_regions() == 0);
  cache.reset();
  CHECK(cache.retired_regions() == 1);
  cache.unpin(new_pin);
  CHECK(cache.retired_regions() == 0);
}

// Item 5: the VMM truncates the memory file behind its guest. The access that faults must not
// kill the daemon; that region alone turns into scratch memory and is refused from then on.
TEST_CASE("iotlb: a VMM that truncates its memory file breaks only its own mapping, not the process") {
  GuestFile victim, bystander;
  victim.fill('v');
  bystander.fill('b');
  vb::vduse::IotlbCache cache(victim.source());
  vb::vduse::IotlbCache other(bystander.source());
  void *pm = cache.map_contiguous(kIova, kSize, true);
  void *qm = other.map_contiguous(kIova, kSize, true);
  REQUIRE(pm != nullptr);
  REQUIRE(qm != nullptr);
  auto *p = static_cast<volatile char *>(pm);
  auto *q = static_cast<volatile char *>(qm);
  const char before = p[100];
  CHECK(before == 'v');
  const unsigned long caught = vb::vduse::sigbus_guard::caught();
  REQUIRE(::ftruncate(victim.fd, 0) == 0);
  const char after = p[kSize / 2]; // faults, then reads scratch
  CHECK(after == 0);
  p[200] = 'x'; // writes go nowhere, and do not fault
  CHECK(vb::vduse::sigbus_guard::caught() == caught + 1);
  CHECK(cache.poisoned_regions() == 1);
  CHECK(cache.map_contiguous(kIova, 16, false) == nullptr); // its requests fail from now on
  const char other_byte = q[100];
  CHECK(other_byte == 'b'); // another device is untouched
  CHECK(other.poisoned_regions() == 0);
  // The next IOTLB update retires the poisoned region; a file that is still short is refused.
  cache.invalidate(0, UINT64_MAX);
  CHECK(cache.map_contiguous(kIova, 16, false) == nullptr);
  REQUIRE(::ftruncate(victim.fd, kSize) == 0);
  CHECK(cache.map_contiguous(kIova, 16, false) != nullptr);
}

TEST_CASE("iotlb: a region whose memory file is shorter than the region is refused") {
  GuestFile g;
  REQUIRE(::ftruncate(g.fd, kSize / 2) == 0);
  vb::vduse::IotlbCache cache(g.source());
  CHECK(cache.map_contiguous(kIova, 16, false) == nullptr);
  CHECK(cache.cached_regions() == 0);
}
