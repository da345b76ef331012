// The crash-recovery state: the state file (identity, format checks, locking) and the in-flight
// log, driven through a simulated guest ring and killed after every single store it or the ring
// makes, to check that every request is completed exactly once in the end.
#include "recovery/recovery_state.h"
#include "recovery/state_layout.h"
#include "test_support.h"

#include <doctest/doctest.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <functional>
#include <memory>
#include <new>
#include <set>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using vb::recovery::DeviceIdentity;
using vb::recovery::IdentityMismatch;
using vb::recovery::QueueLog;
using vb::recovery::QueueLogCrashHook;
using vb::recovery::RecoveryState;
using vb::recovery::StateError;
using vb::test::TempDir;
namespace layout = vb::recovery::layout;

// Counts heap allocations, so that a test can prove the data path makes none.
namespace {
std::atomic<long> g_allocations{0};
} // namespace

// The replacements pair malloc with free; GCC cannot see that new and delete are both replaced.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void *operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void *p = std::malloc(n == 0 ? 1 : n))
    return p;
  throw std::bad_alloc();
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete(void *p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace {

constexpr const char *kName = "disk0";

DeviceIdentity identity() {
  DeviceIdentity id;
  id.name = kName;
  id.num_queues = 2;
  id.queue_size = 8;
  id.capacity = 1ULL << 30;
  id.logical_block_size = 512;
  id.features = 0x130007646ULL;
  id.backend_kind = "nbd";
  id.backend_identity = "nbd+unix:///export?socket=/run/nbd.sock";
  return id;
}

std::string read_bytes(const std::string &path) { return vb::test::read_file(path); }

void write_bytes(const std::string &path, const std::string &bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

template <class T> void poke(const std::string &path, std::uint64_t offset, T value) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, &value, sizeof value, static_cast<off_t>(offset)) == static_cast<ssize_t>(sizeof value));
  ::close(fd);
}

template <class T> T peek(const std::string &path, std::uint64_t offset) {
  const std::string bytes = read_bytes(path);
  REQUIRE(offset + sizeof(T) <= bytes.size());
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

std::uint64_t queue_field(unsigned queue, std::size_t field) { return layout::queue_offset(queue, 8) + field; }
std::uint64_t entry_field(unsigned queue, unsigned head, std::size_t field) {
  return layout::queue_offset(queue, 8) + sizeof(layout::QueueHeader) + head * sizeof(layout::Entry) + field;
}

// The message of the StateError (or IdentityMismatch) that opening throws.
std::string open_error(const std::string &dir, const DeviceIdentity &id = identity()) {
  try {
    RecoveryState::open_or_create(dir, id);
  } catch (const StateError &e) {
    return e.what();
  }
  return "(no error thrown)";
}

std::string recover_error(QueueLog &log, std::uint16_t used_in_ring) {
  try {
    log.recover(used_in_ring);
  } catch (const StateError &e) {
    return e.what();
  }
  return "(no error thrown)";
}

bool has_cloexec_fd_for(const std::string &path) {
  const std::string canonical = std::filesystem::canonical(path).string();
  for (const auto &entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(entry.path(), ec);
    if (ec || target.string() != canonical)
      continue;
    const int fd = std::stoi(entry.path().filename().string());
    return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
  }
  return false;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// The file

TEST_CASE("a new state file is created whole, 0600, close-on-exec, and a successor reattaches to it") {
  TempDir dir;
  const std::string state_dir = dir.file("run"); // created on demand
  const std::string path = RecoveryState::path_for(state_dir, kName);
  {
    auto state = RecoveryState::open_or_create(state_dir, identity());
    CHECK(state->created());
    CHECK(state->path() == path);
    CHECK(state->num_queues() == 2);
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(static_cast<std::uint64_t>(st.st_size) == layout::file_size(2, 8));
    REQUIRE(::stat(state_dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0700);
    CHECK(has_cloexec_fd_for(path));
    CHECK_FALSE(std::filesystem::exists(path + ".new"));
    CHECK_FALSE(state->queue(0).started());
    CHECK_FALSE(state->queue(1).started());
    CHECK_THROWS_AS(state->queue(2), std::out_of_range);
    CHECK(peek<char>(path, 0) == 'V');
  }
  auto again = RecoveryState::open_or_create(state_dir, identity());
  CHECK_FALSE(again->created());
  CHECK(again->identity() == identity());
  CHECK_FALSE(again->queue(1).recover(0).started);
}

TEST_CASE("a second process for the same device is refused while the first holds the file") {
  TempDir dir;
  auto first = RecoveryState::open_or_create(dir.path(), identity());
  CHECK(open_error(dir.path()).find(first->path() + " is in use by another process") != std::string::npos);
  first.reset();
  CHECK(open_error(dir.path()) == "(no error thrown)");
}

TEST_CASE("a temporary file left by a creator that died is reused") {
  TempDir dir;
  write_bytes(dir.file("disk0.state.new"), "half a header");
  auto state = RecoveryState::open_or_create(dir.path(), identity());
  CHECK(state->created());
  CHECK_FALSE(std::filesystem::exists(dir.file("disk0.state.new")));
}

TEST_CASE("reattaching with any field of the identity different names that field and leaves the file alone") {
  struct Case {
    const char *field;
    std::function<void(DeviceIdentity &)> change;
    const char *message;
  };
  const std::vector<Case> cases = {
      {"queues", [](DeviceIdentity &i) { i.num_queues = 4; }, "queues: the state file says 2, the configuration 4"},
      {"queue size", [](DeviceIdentity &i) { i.queue_size = 16; },
       "queue size: the state file says 8, the configuration 16"},
      {"logical block size", [](DeviceIdentity &i) { i.logical_block_size = 4096; },
       "logical block size: the state file says 512, the configuration 4096"},
      {"features", [](DeviceIdentity &i) { i.features = 0x130007644ULL; },
       "features: the state file says 0x130007646, the configuration 0x130007644"},
      {"backend kind", [](DeviceIdentity &i) { i.backend_kind = "iscsi"; },
       "backend kind: the state file says \"nbd\", the configuration \"iscsi\""},
      {"backend identity", [](DeviceIdentity &i) { i.backend_identity = "nbd://server/other"; },
       "backend identity: the state file says \"nbd+unix:///export?socket=/run/nbd.sock\", the configuration "
       "\"nbd://server/other\""},
  };
  for (const auto &c : cases) {
    CAPTURE(c.field);
    TempDir dir;
    RecoveryState::open_or_create(dir.path(), identity());
    const std::string path = RecoveryState::path_for(dir.path(), kName);
    const std::string before = read_bytes(path);
    DeviceIdentity other = identity();
    c.change(other);
    try {
      RecoveryState::open_or_create(dir.path(), other);
      FAIL("no IdentityMismatch");
    } catch (const IdentityMismatch &e) {
      CHECK(std::string(e.what()) == path + " belongs to another configuration of the device: " + c.message);
      REQUIRE(e.differences().size() == 1);
      CHECK(e.differences()[0].field == c.field);
    }
    CHECK(read_bytes(path) == before);
  }
}

TEST_CASE("every differing field is named, and a renamed file is caught by the device name") {
  TempDir dir;
  RecoveryState::open_or_create(dir.path(), identity());
  DeviceIdentity other = identity();
  other.num_queues = 1;
  other.backend_kind = "memory";
  const std::string msg = open_error(dir.path(), other);
  CHECK(msg.find("queues: the state file says 2, the configuration 1; backend kind: the state file says \"nbd\", "
                 "the configuration \"memory\"") != std::string::npos);

  std::filesystem::copy_file(dir.file("disk0.state"), dir.file("disk1.state"));
  DeviceIdentity renamed = identity();
  renamed.name = "disk1";
  CHECK(
      open_error(dir.path(), renamed).find("device name: the state file says \"disk0\", the configuration \"disk1\"") !=
      std::string::npos);
}

TEST_CASE("files that are not state files of this layout are refused with the reason") {
  TempDir dir;
  const std::string path = RecoveryState::path_for(dir.path(), kName);
  RecoveryState::open_or_create(dir.path(), identity());
  const std::string good = read_bytes(path);

  struct Case {
    const char *what;
    std::function<std::string(std::string)> mutate;
    std::string message;
  };
  const auto set_u32 = [](std::string b, std::size_t off, std::uint32_t v) {
    std::memcpy(b.data() + off, &v, sizeof v);
    return b;
  };
  const std::vector<Case> cases = {
      {"empty", [](std::string) { return std::string(); },
       path + " is truncated: 0 bytes, shorter than the 4096-byte header"},
      {"other content", [](std::string b) { return std::string(b.size(), 'x'); },
       path + " is not a vduse-bridge state file (wrong magic)"},
      {"other version", [&](std::string b) { return set_u32(b, offsetof(layout::FileHeader, version), 2); },
       path + " has layout version 2, this vduse-bridge reads version 1: it was written by an incompatible "
              "vduse-bridge (stop the device and remove the file to start over)"},
      {"other byte order",
       [&](std::string b) { return set_u32(b, offsetof(layout::FileHeader, byte_order), 0x04030201); },
       path + " was written by a machine of another byte order (mark 0x4030201)"},
      {"half a header", [](std::string b) { return b.substr(0, 1000); },
       path + " is truncated: 1000 bytes, shorter than the 4096-byte header"},
      {"queues cut off", [](std::string b) { return b.substr(0, 4096 + 100); },
       path + " is truncated: 4196 bytes, the header says " + std::to_string(good.size())},
      {"grown", [](std::string b) { return b + "x"; },
       path + " is corrupt: " + std::to_string(good.size() + 1) + " bytes, the header says " +
           std::to_string(good.size())},
      {"other entry size", [&](std::string b) { return set_u32(b, offsetof(layout::FileHeader, entry_size), 24); },
       path + " is corrupt: header, queue header and entry sizes 4096/64/24, this layout has 4096/64/16"},
      {"bad stride", [&](std::string b) { return set_u32(b, offsetof(layout::FileHeader, queue_stride), 100); },
       path + " is corrupt: queue stride 100, queues of 8 entries need 192"},
      {"bad queue size", [&](std::string b) { return set_u32(b, offsetof(layout::FileHeader, queue_size), 6); },
       path + " is corrupt: queue size 6"},
  };
  for (const auto &c : cases) {
    CAPTURE(c.what);
    const std::string bad = c.mutate(good);
    write_bytes(path, bad);
    CHECK(open_error(dir.path()) == c.message);
    CHECK(read_bytes(path) == bad);
  }

  std::filesystem::remove(path);
  std::filesystem::create_symlink(dir.file("elsewhere"), path);
  CHECK(open_error(dir.path()).find("cannot open " + path) != std::string::npos);
}

TEST_CASE("identities that cannot be stored are refused before anything is created") {
  TempDir dir;
  const auto refused = [&](const std::function<void(DeviceIdentity &)> &change) {
    DeviceIdentity id = identity();
    change(id);
    CHECK_THROWS_AS(RecoveryState::open_or_create(dir.file("run"), id), std::invalid_argument);
  };
  refused([](DeviceIdentity &i) { i.name = ""; });
  refused([](DeviceIdentity &i) { i.name = "../etc/x"; });
  refused([](DeviceIdentity &i) { i.name = std::string(246, 'a'); }); // NAME.state.new: 256 bytes
  refused([](DeviceIdentity &i) { i.num_queues = 0; });
  refused([](DeviceIdentity &i) { i.queue_size = 6; });
  refused([](DeviceIdentity &i) { i.backend_kind = std::string(32, 'k'); });
  refused([](DeviceIdentity &i) { i.backend_identity = std::string(256, 'u'); });
  refused([](DeviceIdentity &i) { i.backend_identity = std::string("a\0b", 3); });
  CHECK_FALSE(std::filesystem::exists(dir.file("run")));

  DeviceIdentity longest = identity();
  longest.name = std::string(245, 'a');
  longest.backend_identity = std::string(255, 'u');
  RecoveryState::open_or_create(dir.path(), longest);
  CHECK_FALSE(RecoveryState::open_or_create(dir.path(), longest)->created());
}

TEST_CASE("a resize is recorded for the successor, and teardown removes the file") {
  TempDir dir;
  {
    auto state = RecoveryState::open_or_create(dir.path(), identity());
    state->set_capacity(3ULL << 30);
    CHECK(state->identity().capacity == 3ULL << 30);
  }
  // Issue 12, item 8: the storage changed size while no daemon ran. That is a resize, not another
  // device: the file is taken, and says which capacity the kernel's device still has.
  {
    auto reopened = RecoveryState::open_or_create(dir.path(), identity());
    CHECK_FALSE(reopened->created());
    CHECK(reopened->identity().capacity == 3ULL << 30);
  }
  DeviceIdentity resized = identity();
  resized.capacity = 3ULL << 30;
  auto state = RecoveryState::open_or_create(dir.path(), resized);
  state->remove();
  CHECK_FALSE(std::filesystem::exists(state->path()));
  state->queue(0).start(8, 0, 0); // the mapping outlives the name
  state.reset();
  CHECK_FALSE(RecoveryState::remove_file(dir.path(), kName));
  RecoveryState::open_or_create(dir.path(), identity());
  CHECK(RecoveryState::remove_file(dir.path(), kName));
  CHECK_FALSE(std::filesystem::exists(dir.file("disk0.state")));
}

// ---------------------------------------------------------------------------------------------
// The log, call by call

TEST_CASE("a clean run leaves nothing to resubmit, and the log tracks the ring") {
  TempDir dir;
  auto state = RecoveryState::open_or_create(dir.path(), identity());
  QueueLog &q = state->queue(1);
  CHECK_FALSE(q.popped(0)); // not started
  REQUIRE(q.start(8, 0, 0));
  CHECK(q.started());
  CHECK(q.ring_size() == 8);
  CHECK(q.popped(3));
  CHECK(q.popped(5));
  CHECK(q.in_flight(3));
  CHECK(q.next_avail() == 2);
  q.before_publish(5, 0);
  q.after_publish(5, 1);
  CHECK_FALSE(q.in_flight(5));
  CHECK(q.used_idx() == 1);
  const auto r = q.recover(1);
  CHECK(r.started);
  CHECK(r.next_avail == 2);
  CHECK(r.used_idx == 1);
  CHECK(r.in_flight_oldest_first == std::vector<std::uint16_t>{3});
  CHECK_FALSE(r.finished_publish);
  CHECK_FALSE(r.finished_pop);
  CHECK_FALSE(state->queue(0).started()); // queues are separate
}

TEST_CASE("popped refuses a head outside the ring or already in flight, without recording anything") {
  TempDir dir;
  auto state = RecoveryState::open_or_create(dir.path(), identity());
  QueueLog &q = state->queue(0);
  CHECK_FALSE(q.start(6, 0, 0));
  CHECK_FALSE(q.start(16, 0, 0));
  CHECK_FALSE(q.start(0, 0, 0));
  REQUIRE(q.start(4, 0, 0)); // the driver shrank the ring
  CHECK_FALSE(q.popped(4));
  CHECK_FALSE(q.popped(0xffff));
  CHECK(q.popped(1));
  CHECK_FALSE(q.popped(1));
  CHECK(q.next_avail() == 1);
  q.after_publish(0xffff, 1); // ignored, not a write outside the file
  CHECK(q.recover(0).in_flight_oldest_first == std::vector<std::uint16_t>{1});
}

TEST_CASE("resubmission is oldest first, by pop order, also across the 16-bit avail index wrap") {
  TempDir dir;
  {
    auto state = RecoveryState::open_or_create(dir.path(), identity());
    QueueLog &q = state->queue(0);
    REQUIRE(q.start(8, 65533, 65533));
    for (std::uint16_t h : {5, 2, 7, 1, 0}) // avail indices 65533, 65534, 65535, 0, 1
      REQUIRE(q.popped(h));
    q.before_publish(2, 65533);
    q.after_publish(2, 65534);
    CHECK(q.next_avail() == 2);
  }
  auto state = RecoveryState::open_or_create(dir.path(), identity());
  const auto r = state->queue(0).recover(65534);
  CHECK(r.in_flight_oldest_first == std::vector<std::uint16_t>{5, 7, 1, 0});
  CHECK(r.next_avail == 2);
  CHECK(r.used_idx == 65534);
}

TEST_CASE("a reset forgets every request, and a new start keeps the order counters growing") {
  TempDir dir;
  const std::string path = RecoveryState::path_for(dir.path(), kName);
  auto state = RecoveryState::open_or_create(dir.path(), identity());
  QueueLog &q = state->queue(0);
  REQUIRE(q.start(8, 0, 0));
  REQUIRE(q.popped(4));
  REQUIRE(q.popped(6));
  const auto old_counter = peek<std::uint64_t>(path, entry_field(0, 6, offsetof(layout::Entry, counter)));
  q.stop();
  CHECK_FALSE(q.started());
  CHECK_FALSE(q.recover(0).started);
  CHECK_FALSE(q.popped(1));
  REQUIRE(q.start(8, 0, 0));
  CHECK_FALSE(q.in_flight(4));
  CHECK(q.next_avail() == 0);
  REQUIRE(q.popped(4));
  CHECK(peek<std::uint64_t>(path, entry_field(0, 4, offsetof(layout::Entry, counter))) > old_counter);
  CHECK(q.recover(0).in_flight_oldest_first == std::vector<std::uint16_t>{4});
}

TEST_CASE("killed between the used index store and after_publish: the request is not completed again") {
  TempDir dir;
  std::uint16_t used_in_ring = 0;
  for (int cut = 0; cut <= 2; ++cut) { // after_publish not run, killed after A1, run fully
    CAPTURE(cut);
    {
      auto state = RecoveryState::open_or_create(dir.path(), identity());
      QueueLog &q = state->queue(0);
      REQUIRE(q.start(8, 0, 0));
      used_in_ring = 0;
      REQUIRE(q.popped(2));
      REQUIRE(q.popped(6));
      q.before_publish(6, 0);
      used_in_ring = 1; // SplitQueue::push
      int stores = 0;
      if (cut > 0)
        CHECK(QueueLogCrashHook::after_publish(q, 6, 1, [&] { return ++stores == 1 && cut == 1; }) == (cut == 2));
    }
    auto state = RecoveryState::open_or_create(dir.path(), identity());
    const auto r = state->queue(0).recover(used_in_ring);
    CHECK(r.in_flight_oldest_first == std::vector<std::uint16_t>{2});
    CHECK(r.used_idx == 1);
    CHECK(r.next_avail == 2);
    CHECK(r.finished_publish == (cut < 2));
    const auto again = state->queue(0).recover(used_in_ring); // repaired: nothing more to do
    CHECK_FALSE(again.finished_publish);
    CHECK(again.in_flight_oldest_first == std::vector<std::uint16_t>{2});
  }
}

TEST_CASE("killed inside popped: the request is popped exactly once by whoever comes next") {
  TempDir dir;
  for (int cut = 0; cut <= 3; ++cut) { // killed before P1, after P1, after P2, after P3
    CAPTURE(cut);
    {
      auto state = RecoveryState::open_or_create(dir.path(), identity());
      QueueLog &q = state->queue(0);
      REQUIRE(q.start(8, 10, 10));
      int stores = 0;
      if (cut > 0)
        QueueLogCrashHook::popped(q, 3, [&] { return ++stores == cut; });
    }
    auto state = RecoveryState::open_or_create(dir.path(), identity());
    const auto r = state->queue(0).recover(10);
    if (cut < 2) { // not marked: pop avail[10] again
      CHECK(r.next_avail == 10);
      CHECK(r.in_flight_oldest_first.empty());
    } else { // marked: resubmit it, do not pop it again
      CHECK(r.next_avail == 11);
      CHECK(r.in_flight_oldest_first == std::vector<std::uint16_t>{3});
    }
    CHECK(r.finished_pop == (cut == 2));
  }
}

TEST_CASE("recover refuses a log that is corrupt or does not fit the ring, and writes nothing then") {
  TempDir dir;
  const std::string path = RecoveryState::path_for(dir.path(), kName);
  const std::string label = path + ", queue 1";
  const auto fresh = [&] {
    std::filesystem::remove(path);
    auto state = RecoveryState::open_or_create(dir.path(), identity());
    QueueLog &q = state->queue(1);
    REQUIRE(q.start(8, 0, 0));
    REQUIRE(q.popped(1));
    REQUIRE(q.popped(2));
    q.before_publish(2, 0);
    q.after_publish(2, 1);
    REQUIRE(q.popped(3));
  };
  struct Case {
    const char *what;
    std::function<void()> damage;
    std::uint16_t used_in_ring;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"used index far ahead", [] {}, 3,
       label + ": the used ring's index is 3 but the log last published 1, and no completion in progress explains it "
               "(another ring, or the driver wrote its used ring)"},
      {"used index behind", [] {}, 0, label + ": the used ring's index is 0 but the log last published 1"},
      {"one ahead without a batch for it", [] {}, 2,
       label + ": the used ring's index is 2 but the log last published 1"},
      {"batch head outside the ring",
       [&] {
         poke<std::uint64_t>(path, queue_field(1, offsetof(layout::QueueHeader, batch)), layout::pack_batch(9, 1));
       },
       2, label + " is corrupt: the head being published, 9, is outside the ring of 8"},
      {"in-flight flag not 0 or 1",
       [&] { poke<std::uint32_t>(path, entry_field(1, 5, offsetof(layout::Entry, in_flight)), 7); }, 1,
       label + " is corrupt: head 5 has the in-flight flag 7"},
      {"counter from the future",
       [&] { poke<std::uint64_t>(path, entry_field(1, 1, offsetof(layout::Entry, counter)), 1ULL << 40); }, 1,
       label + " is corrupt: head 1 has the order counter 1099511627776, outside this start's pops [65536, 65539]"},
      {"two heads with one counter",
       [&] {
         poke<std::uint64_t>(path, entry_field(1, 3, offsetof(layout::Entry, counter)),
                             peek<std::uint64_t>(path, entry_field(1, 1, offsetof(layout::Entry, counter))));
       },
       1, label + " is corrupt: heads 1 and 3 have the same order counter 65536"},
      {"a completion that bypassed the log",
       [&] { poke<std::uint32_t>(path, entry_field(1, 3, offsetof(layout::Entry, in_flight)), 0); }, 1,
       label + " is corrupt: 1 heads are in flight, but next avail 3, used 1 and baseline 0 say 2 (a pop or a "
               "completion bypassed the log)"},
      {"ring size", [&] { poke<std::uint32_t>(path, queue_field(1, offsetof(layout::QueueHeader, ring_size)), 12); }, 1,
       label + " is corrupt: the ring size 12 is not a power of two up to the queue size 8"},
      {"started flag", [&] { poke<std::uint32_t>(path, queue_field(1, offsetof(layout::QueueHeader, started)), 9); }, 1,
       label + " is corrupt: the started flag is 9"},
  };
  for (const auto &c : cases) {
    CAPTURE(c.what);
    fresh();
    c.damage();
    const std::string before = read_bytes(path);
    auto state = RecoveryState::open_or_create(dir.path(), identity());
    CHECK(recover_error(state->queue(1), c.used_in_ring).rfind(c.message, 0) == 0);
    CHECK(read_bytes(path) == before);
  }
}

TEST_CASE("the data path allocates nothing") {
  TempDir dir;
  auto state = RecoveryState::open_or_create(dir.path(), identity());
  QueueLog &q = state->queue(0);
  REQUIRE(q.start(8, 0, 0));
  const long before = g_allocations.load();
  std::uint16_t used = 0;
  for (int round = 0; round < 1000; ++round) {
    for (std::uint16_t h = 0; h < 8; ++h)
      (void)q.popped(h);
    for (std::uint16_t h = 8; h-- > 0;) {
      q.before_publish(h, used);
      ++used;
      q.after_publish(h, used);
    }
  }
  CHECK(g_allocations.load() == before);
  CHECK(q.next_avail() == static_cast<std::uint16_t>(8000));
  CHECK(q.recover(used).in_flight_oldest_first.empty());
}

// ---------------------------------------------------------------------------------------------
// Killed after every store
//
// A guest driver posts requests on a small split ring held in plain memory (what survives the
// daemon), a simulated daemon pops them, completes them out of order through the log and the used
// ring, and the driver reaps completions; heads are reused. The first run records a snapshot (the
// state file's bytes + the guest) after every single store of the log or the ring. Each snapshot
// is a crash: a successor boots from it (recover), runs on, and is itself killed early or at a
// random point in some runs; a last one finishes. At the crash the recovered state must split the
// requests exactly: published before, resubmitted (oldest first), or still to pop. In the end
// every request must have been completed exactly once, and none after a reset cancelled it.

namespace {

constexpr std::uint16_t kRing = 8;
constexpr unsigned kSimQueue = 1;

struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    s += 0x9e3779b97f4a7c15ULL;
    std::uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  unsigned below(unsigned n) { return static_cast<unsigned>(next() % n); }
};

struct Killed {};

// How often recovery met each crash window, to show the runs reach them.
struct Windows {
  std::size_t finished_publish = 0;
  std::size_t finished_pop = 0;
  std::size_t killed_in_recover = 0;
};
Windows g_windows;

// Guest memory and the driver's bookkeeping: all of it outlives the daemon.
struct Guest {
  explicit Guest(std::uint16_t base_) : base(base_), avail_idx(base_), used_idx(base_), reaped(base_) {
    owner.fill(-1);
  }

  std::uint16_t base; // avail/used index at which the current ring started
  std::array<std::uint16_t, kRing> avail{};
  std::uint16_t avail_idx;
  std::array<std::pair<std::uint16_t, int>, kRing> used{}; // {head, request the device says it executed}
  std::uint16_t used_idx;

  std::array<int, kRing> owner{}; // request on each head, -1 if free
  std::uint16_t reaped;
  std::vector<int> completions; // per request
  std::vector<bool> cancelled;  // by a reset
  std::vector<int> posted;      // this ring's requests in avail order
  std::vector<long> pop_order;  // when a daemon last popped each request
  long pop_clock = 0;
  bool reset_pending = false; // SET_STATUS(0) sent, not yet answered

  int errors = 0;
  std::string first_error;
  void fail(const std::string &what) {
    if (errors++ == 0)
      first_error = what;
  }

  void post(Rng &rng) {
    if (reset_pending)
      return;
    std::vector<std::uint16_t> free;
    for (std::uint16_t h = 0; h < kRing; ++h)
      if (owner[h] < 0)
        free.push_back(h);
    if (free.empty())
      return;
    const std::uint16_t h = free[rng.below(static_cast<unsigned>(free.size()))];
    const int r = static_cast<int>(completions.size());
    completions.push_back(0);
    cancelled.push_back(false);
    pop_order.push_back(-1);
    owner[h] = r;
    posted.push_back(r);
    avail[avail_idx % kRing] = h;
    ++avail_idx;
  }

  void reap() {
    for (; reaped != used_idx; ++reaped) {
      const auto [h, r] = used[reaped % kRing];
      if (h >= kRing || owner[h] < 0 || owner[h] != r) {
        fail("completion of head " + std::to_string(h) + " for request " + std::to_string(r) +
             ", but the driver has request " + std::to_string(h < kRing ? owner[h] : -2) + " there");
        continue;
      }
      ++completions[r];
      owner[h] = -1;
    }
  }

  // The driver reset the device and set it up again (DRIVER_OK): what was in flight is cancelled.
  void reinit() {
    reap();
    for (auto &o : owner) {
      if (o >= 0)
        cancelled[o] = true;
      o = -1;
    }
    avail_idx = used_idx = reaped = base;
    posted.clear();
    reset_pending = false;
  }
};

using Die = QueueLogCrashHook::Die;

// One life of the daemon, serving queue kSimQueue through the log. die() runs after every store
// to the log or the ring; true kills the daemon there.
class Daemon {
public:
  Daemon(QueueLog &log, Guest &g, const Die &die, std::string &where) : log_(log), g_(g), die_(die), where_(where) {}

  void boot() {
    if (g_.reset_pending) { // the replayed SET_STATUS(0) is answered before queues are recovered
      reset();
      return;
    }
    where_ = "recover";
    const auto rec = QueueLogCrashHook::recover(log_, g_.used_idx, die_);
    if (!rec)
      throw Killed{};
    if (!rec->started) { // died in start(): nothing was popped; start from the kernel's vq state
      start();
      return;
    }
    g_windows.finished_publish += rec->finished_publish;
    g_windows.finished_pop += rec->finished_pop;
    check_recovered(*rec);
    next_avail_ = rec->next_avail;
    used_ = rec->used_idx;
    for (const std::uint16_t h : rec->in_flight_oldest_first)
      executing_.push_back({h, g_.owner[h]}); // resubmitted: the request is read again from its descriptors
  }

  void step(Rng &rng, bool resets) {
    const unsigned dice = rng.below(100);
    if (dice < 30)
      g_.post(rng);
    else if (dice < 42)
      g_.reap();
    else if (dice < 68)
      (void)pop();
    else if (dice < 97) {
      if (!executing_.empty())
        complete(rng.below(static_cast<unsigned>(executing_.size())));
    } else if (resets) {
      g_.reset_pending = true;
      reset();
    }
  }

  void drain(Rng &rng) {
    g_.post(rng);
    g_.post(rng);
    for (;;) {
      while (pop()) {
      }
      if (executing_.empty())
        break;
      complete(rng.below(static_cast<unsigned>(executing_.size())));
    }
    g_.reap();
    where_ = "final check";
    const auto rec = log_.recover(g_.used_idx);
    if (!rec.started || !rec.in_flight_oldest_first.empty() || rec.next_avail != g_.avail_idx ||
        rec.used_idx != g_.used_idx)
      g_.fail("after the drain the log does not match the ring");
  }

private:
  void tick() {
    if (die_())
      throw Killed{};
  }

  void start() {
    where_ = "start";
    bool ok = false;
    if (!QueueLogCrashHook::start(log_, kRing, g_.base, g_.used_idx, die_, &ok))
      throw Killed{};
    if (!ok)
      g_.fail("start() refused the ring");
    next_avail_ = g_.base;
    used_ = g_.used_idx;
    executing_.clear();
  }

  void reset() {
    where_ = "reset";
    if (!QueueLogCrashHook::stop(log_, die_)) // before the answer to SET_STATUS(0)
      throw Killed{};
    executing_.clear(); // results of requests still in the backend are dropped
    g_.reinit();
    start();
  }

  bool pop() {
    if (next_avail_ == g_.avail_idx)
      return false;
    const std::uint16_t h = g_.avail[next_avail_ % kRing];
    ++next_avail_;
    const int r = g_.owner[h];
    if (r < 0) {
      g_.fail("popped head " + std::to_string(h) + " that the driver did not make available");
      return false;
    }
    g_.pop_order[r] = ++g_.pop_clock;
    where_ = "pop of head " + std::to_string(h) + " (request " + std::to_string(r) + ")";
    bool ok = false;
    if (!QueueLogCrashHook::popped(log_, h, die_, &ok))
      throw Killed{};
    if (!ok)
      g_.fail("popped() refused head " + std::to_string(h));
    executing_.push_back({h, r});
    return true;
  }

  void complete(unsigned i) {
    const auto [h, r] = executing_[i];
    executing_.erase(executing_.begin() + i);
    where_ = "completion of head " + std::to_string(h) + " (request " + std::to_string(r) + ")";
    if (!QueueLogCrashHook::before_publish(log_, h, used_, die_))
      throw Killed{};
    g_.used[used_ % kRing] = {h, r}; // SplitQueue::push: the element...
    tick();
    g_.used_idx = static_cast<std::uint16_t>(used_ + 1); // ...then the index
    tick();
    ++used_;
    if (!QueueLogCrashHook::after_publish(log_, h, used_, die_))
      throw Killed{};
  }

  // The recovered state splits this ring's requests exactly: published, resubmitted, or to pop.
  void check_recovered(const QueueLog::Recovered &rec) {
    g_.reap();
    if (rec.used_idx != g_.used_idx)
      g_.fail("recovered used index " + std::to_string(rec.used_idx) + ", the ring has " + std::to_string(g_.used_idx));
    std::set<int> resubmitted;
    long last_pop = -1;
    for (const std::uint16_t h : rec.in_flight_oldest_first) {
      const int r = g_.owner[h];
      if (r < 0 || g_.completions[r] != 0 || !resubmitted.insert(r).second) {
        g_.fail("resubmitted head " + std::to_string(h) + " is not an outstanding request");
        return;
      }
      if (g_.pop_order[r] <= last_pop)
        g_.fail("resubmission not oldest first at head " + std::to_string(h));
      last_pop = g_.pop_order[r];
    }
    const auto consumed = static_cast<std::uint16_t>(rec.next_avail - g_.base);
    if (consumed > g_.posted.size())
      g_.fail("next avail " + std::to_string(rec.next_avail) + " is past what the driver posted");
    for (std::size_t i = 0; i < g_.posted.size(); ++i) {
      const int r = g_.posted[i];
      const bool popped = i < consumed;
      const bool published = g_.completions[r] == 1;
      const bool again = resubmitted.count(r) != 0;
      if (published ? (!popped || again) : (again != popped))
        g_.fail("request " + std::to_string(r) + " at avail slot " + std::to_string(i) +
                (published ? ": published" : "") + (again ? ": resubmitted" : "") +
                (popped ? ": counted as popped" : ": left to pop"));
    }
  }

  QueueLog &log_;
  Guest &g_;
  const Die &die_;
  std::string &where_;
  std::uint16_t next_avail_ = 0;
  std::uint16_t used_ = 0;
  std::vector<std::pair<std::uint16_t, int>> executing_; // {head, request}
};

DeviceIdentity sim_identity() { return identity(); }

// One life: open the state (creating it the first time), boot, run, drain. False if killed.
bool live(const std::string &dir, Guest &g, std::uint64_t seed, int steps, bool resets, const Die &die,
          std::string &where) {
  auto state = RecoveryState::open_or_create(dir, sim_identity());
  Daemon d(state->queue(kSimQueue), g, die, where);
  try {
    d.boot();
    Rng rng{seed};
    for (int i = 0; i < steps; ++i)
      d.step(rng, resets);
    d.drain(rng);
    return true;
  } catch (const Killed &) {
    return false;
  }
}

void check_final(Guest &g, const std::string &context) {
  g.reap();
  for (std::size_t r = 0; r < g.completions.size(); ++r) {
    if (g.cancelled[r] ? g.completions[r] > 1 : g.completions[r] != 1)
      g.fail("request " + std::to_string(r) + " completed " + std::to_string(g.completions[r]) + " times" +
             (g.cancelled[r] ? " (cancelled by a reset)" : ""));
  }
  if (g.errors != 0)
    FAIL(context << ": " << g.first_error);
}

struct Snapshot {
  bool has_file;
  std::string file;
  Guest guest;
  std::string where;
};

struct CrashStats {
  std::size_t crash_points = 0;
  std::size_t lives = 0;
};

CrashStats crash_everywhere(std::uint64_t seed, int steps, bool resets, std::uint16_t base) {
  CrashStats stats;
  TempDir first_dir;
  const std::string first_path = RecoveryState::path_for(first_dir.path(), kName);
  Guest g(base);
  std::string where = "before the daemon created its state file";
  std::vector<Snapshot> snaps;
  snaps.push_back({false, {}, g, where});
  const Die record = [&] {
    snaps.push_back({true, read_bytes(first_path), g, where + ", store " + std::to_string(snaps.size())});
    return false;
  };
  REQUIRE(live(first_dir.path(), g, seed, steps, resets, record, where));
  check_final(g, "seed " + std::to_string(seed) + " without a crash");
  stats.crash_points = snaps.size();

  TempDir dir;
  const std::string path = RecoveryState::path_for(dir.path(), kName);
  Rng pick{seed * 7 + 1};
  for (std::size_t i = 0; i < snaps.size(); ++i) {
    const Snapshot &s = snaps[i];
    // kill_at: the successor dies after that many of its own stores (0: never). 1..3 land in
    // recover() or start(); the last one anywhere in its life.
    long successor_stores = 0;
    std::vector<long> kills = {0, 1, 2, 3, -1};
    for (const long planned : kills) {
      long kill_at = planned;
      if (kill_at == -1) {
        if (successor_stores <= 4)
          break;
        kill_at = 4 + static_cast<long>(pick.below(static_cast<unsigned>(successor_stores - 3)));
      } else if (kill_at > 0 && kill_at > successor_stores) {
        break;
      }
      const std::string context = "seed " + std::to_string(seed) + ", killed at " + s.where +
                                  (kill_at ? ", successor killed after its store " + std::to_string(kill_at) : "");
      if (s.has_file)
        write_bytes(path, s.file);
      else
        std::filesystem::remove(path);
      Guest g2 = s.guest;
      std::string w;
      long stores = 0;
      const Die killer = [&] { return ++stores == kill_at; };
      bool done = false;
      try {
        done = live(dir.path(), g2, seed ^ (i << 8), 20, resets, killer, w);
        ++stats.lives;
        if (!done && w == "recover")
          ++g_windows.killed_in_recover;
        if (!done) {
          const Die never = [] { return false; };
          REQUIRE(live(dir.path(), g2, seed ^ (i << 8) ^ 0xabc, 5, resets, never, w));
          ++stats.lives;
        }
      } catch (const StateError &e) {
        FAIL(context << ": " << e.what());
      }
      if (kill_at == 0)
        successor_stores = stores;
      check_final(g2, context);
    }
  }
  return stats;
}

} // namespace

TEST_CASE("killed after any store, the daemon's successor completes every request exactly once") {
  struct Run {
    std::uint64_t seed;
    int steps;
    bool resets;
    std::uint16_t base;
  };
  const std::vector<Run> runs = {
      {1, 60, false, 0}, {2, 80, false, 0},     {3, 80, false, 65530}, // avail/used indices wrap
      {4, 80, true, 0},  {5, 100, true, 65533}, {6, 120, false, 0},
  };
  std::size_t points = 0, lives = 0;
  for (const auto &run : runs) {
    CAPTURE(run.seed);
    const CrashStats s = crash_everywhere(run.seed, run.steps, run.resets, run.base);
    CHECK(s.crash_points > 100);
    points += s.crash_points;
    lives += s.lives;
  }
  MESSAGE("crash points: " << points << ", daemon lives after a crash: " << lives << ", recoveries that finished a "
                           << "publish: " << g_windows.finished_publish << ", a pop: " << g_windows.finished_pop
                           << ", killed inside recover(): " << g_windows.killed_in_recover);
  CHECK(g_windows.finished_publish > 0);
  CHECK(g_windows.finished_pop > 0);
  CHECK(g_windows.killed_in_recover > 0);
}
