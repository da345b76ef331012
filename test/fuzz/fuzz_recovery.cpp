// libFuzzer target: hostile state files (NAME.state) given to a restarted daemon. The bytes become
// the file, and the fuzzer calls what a daemon calls on reattach: RecoveryState::open_or_create()
// with the configuration's identity, then QueueLog::recover() on every queue with the used index
// "the ring" holds. Nothing may crash or read out of bounds (ASan), only StateError may come out,
// a refused file or log is left exactly as it was, and what is accepted must be a consistent log:
//   - the result is what the log says (state_layout.h, queue_log.h), restated here independently;
//   - recovering again changes nothing (the repair left a consistent log);
//   - dying after any store of recover() and recovering again gives the same answer;
//   - the data path (pops, completions, a crash in the middle of one) then runs on the recovered
//     log as on any other, and the next recover() reports exactly the requests still in flight.
//
// Input: byte 0 flags; bytes 1..16 a script of data-path operations (and numbers for the ring's
// used index); then
//   flags bit 0 clear: the whole state file (header included);
//   flags bit 0 set:   byte 17 the geometry (queues, queue size), then the queue areas, placed
//                      after a valid header that the real code wrote for that geometry.
// Flags bits 1-2: the used index in the ring (the log's, one more, or from the script); bit 3:
// the configuration differs (features: refused); bit 4: the storage was resized (accepted).
#include "fuzz_util.h"
#include "recovery/recovery_state.h"
#include "recovery/state_layout.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

using vb::fuzz::Fields;
using vb::recovery::DeviceIdentity;
using vb::recovery::IdentityMismatch;
using vb::recovery::QueueLog;
using vb::recovery::QueueLogCrashHook;
using vb::recovery::RecoveryState;
using vb::recovery::StateError;
namespace layout = vb::recovery::layout;

namespace {

constexpr std::size_t kScriptAt = 1;
constexpr std::size_t kScriptLen = 16;
constexpr std::size_t kBodyAt = kScriptAt + kScriptLen;

// A private directory on tmpfs, removed at exit.
class StateDir {
public:
  StateDir() {
    char tmpl[] = "/dev/shm/vb-fuzz-recovery-XXXXXX";
    char tmpl2[] = "/tmp/vb-fuzz-recovery-XXXXXX";
    const char *p = ::mkdtemp(tmpl);
    if (!p)
      p = ::mkdtemp(tmpl2);
    if (!p)
      std::abort();
    path_ = p;
  }
  ~StateDir() { ::rmdir(path_.c_str()); }
  const std::string &path() const { return path_; }

private:
  std::string path_;
};

const std::string &dir() {
  static StateDir d;
  return d.path();
}

std::string read_file(const std::string &path) {
  std::string out;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  FUZZ_CHECK(fd >= 0);
  char buf[16384];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
    out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

void write_file(const std::string &path, const void *bytes, std::size_t len, std::uint64_t offset = 0,
                bool truncate = true) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0600);
  FUZZ_CHECK(fd >= 0);
  FUZZ_CHECK(::pwrite(fd, bytes, len, static_cast<off_t>(offset)) == static_cast<ssize_t>(len));
  ::close(fd);
}

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

std::string bounded(const char *p, std::size_t n) { return {p, ::strnlen(p, n)}; }

// What DeviceIdentity open_or_create() accepts (recovery_state.h), restated.
bool storable(const DeviceIdentity &id) {
  if (id.name.empty() || id.name.size() > 245 || !std::all_of(id.name.begin(), id.name.end(), name_char))
    return false;
  if (id.num_queues == 0 || id.num_queues > layout::kMaxQueues)
    return false;
  if (id.queue_size == 0 || (id.queue_size & (id.queue_size - 1)) != 0 || id.queue_size > layout::kMaxQueueSize)
    return false;
  return id.backend_kind.size() < layout::kBackendKindSize && id.backend_identity.size() < layout::kBackendIdentitySize;
}

DeviceIdentity default_identity() {
  DeviceIdentity id;
  id.name = "fuzz0";
  id.num_queues = 1;
  id.queue_size = 8;
  id.capacity = 1ULL << 30;
  id.logical_block_size = 512;
  id.features = 0x130007646ULL;
  id.backend_kind = "nbd";
  id.backend_identity = "nbd+unix:///export?socket=/run/nbd.sock";
  return id;
}

// The identity a file claims, as the configuration would have to say it to be accepted.
DeviceIdentity identity_in(const std::string &file) {
  layout::FileHeader h{};
  std::memcpy(&h, file.data(), std::min(file.size(), sizeof h));
  DeviceIdentity id;
  id.name = bounded(h.name, sizeof h.name);
  id.num_queues = h.num_queues;
  id.queue_size = static_cast<std::uint16_t>(h.queue_size);
  id.capacity = h.capacity;
  id.logical_block_size = h.logical_block_size;
  id.features = h.features;
  id.backend_kind = bounded(h.backend_kind, sizeof h.backend_kind);
  id.backend_identity = bounded(h.backend_identity, sizeof h.backend_identity);
  if (h.queue_size > 0xffff || !storable(id))
    return default_identity();
  return id;
}

// Whether a daemon configured with id must accept file (state_layout.h, recovery_state.h), restated.
bool acceptable(const std::string &file, const DeviceIdentity &id) {
  if (file.size() < layout::kHeaderSize)
    return false;
  layout::FileHeader h{};
  std::memcpy(&h, file.data(), sizeof h);
  if (std::memcmp(h.magic, layout::kMagic, sizeof h.magic) != 0 || h.byte_order != layout::kByteOrderMark ||
      h.version != layout::kVersion || h.header_size != layout::kHeaderSize ||
      h.queue_header_size != sizeof(layout::QueueHeader) || h.entry_size != sizeof(layout::Entry))
    return false;
  // The capacity may differ: the storage was resized while no daemon ran.
  if (h.num_queues != id.num_queues || h.queue_size != id.queue_size || h.logical_block_size != id.logical_block_size ||
      h.features != id.features)
    return false;
  if (h.queue_stride != layout::queue_stride(id.queue_size) ||
      h.file_size != layout::file_size(id.num_queues, id.queue_size) || file.size() != h.file_size)
    return false;
  if (h.name[sizeof h.name - 1] || h.backend_kind[sizeof h.backend_kind - 1] ||
      h.backend_identity[sizeof h.backend_identity - 1])
    return false;
  return bounded(h.name, sizeof h.name) == id.name &&
         bounded(h.backend_kind, sizeof h.backend_kind) == id.backend_kind &&
         bounded(h.backend_identity, sizeof h.backend_identity) == id.backend_identity;
}

// A valid header for the geometry, as the real code writes it (cached per geometry).
const std::string &real_header(std::uint32_t num_queues, std::uint16_t queue_size) {
  static std::map<std::pair<std::uint32_t, std::uint16_t>, std::string> cache;
  auto [it, inserted] = cache.try_emplace({num_queues, queue_size});
  if (inserted) {
    DeviceIdentity id = default_identity();
    id.num_queues = num_queues;
    id.queue_size = queue_size;
    { (void)RecoveryState::open_or_create(dir(), id); }
    const std::string path = RecoveryState::path_for(dir(), id.name);
    it->second = read_file(path).substr(0, layout::kHeaderSize);
    ::unlink(path.c_str());
  }
  return it->second;
}

// One queue's area of the file, as bytes were before recover().
struct QueueImage {
  layout::QueueHeader hdr{};
  std::vector<layout::Entry> entries;
};

QueueImage queue_image(const std::string &file, unsigned q, std::uint16_t queue_size) {
  QueueImage img;
  const std::uint64_t at = layout::queue_offset(q, queue_size);
  FUZZ_CHECK(at + layout::queue_stride(queue_size) <= file.size());
  std::memcpy(&img.hdr, file.data() + at, sizeof img.hdr);
  img.entries.resize(queue_size);
  std::memcpy(img.entries.data(), file.data() + at + sizeof img.hdr, sizeof(layout::Entry) * queue_size);
  return img;
}

std::string queue_bytes(const std::string &file, unsigned q, std::uint16_t queue_size) {
  return file.substr(layout::queue_offset(q, queue_size), layout::queue_stride(queue_size));
}

bool power_of_two_up_to(std::uint32_t n, std::uint32_t max) { return n != 0 && n <= max && (n & (n - 1)) == 0; }

// What recover(used_in_ring) must answer for a log it accepts (queue_log.h), restated.
void check_recovered(const QueueImage &img, std::uint16_t capacity, std::uint16_t used_in_ring,
                     const QueueLog::Recovered &r) {
  const layout::QueueHeader &h = img.hdr;
  if (!r.started) {
    FUZZ_CHECK(h.started == 0);
    FUZZ_CHECK(r.in_flight_oldest_first.empty());
    return;
  }
  FUZZ_CHECK(h.started == 1);
  FUZZ_CHECK(power_of_two_up_to(h.ring_size, capacity));
  FUZZ_CHECK(r.ring_size == h.ring_size);
  FUZZ_CHECK(h.used_idx <= 0xffff && h.baseline <= 0xffff);
  FUZZ_CHECK(h.pop_seq >= h.start_seq);
  FUZZ_CHECK(r.used_idx == used_in_ring);
  const auto used = static_cast<std::uint16_t>(h.used_idx);
  FUZZ_CHECK(r.finished_publish == (used_in_ring != used));
  if (r.finished_publish) {
    FUZZ_CHECK(used_in_ring == static_cast<std::uint16_t>(used + 1));
    FUZZ_CHECK(layout::batch_valid(h.batch) && layout::batch_used_before(h.batch) == used);
    FUZZ_CHECK(layout::batch_head(h.batch) < h.ring_size);
  }
  std::vector<std::pair<std::uint64_t, std::uint16_t>> expected;
  for (std::uint32_t head = 0; head < capacity; ++head) {
    const layout::Entry &e = img.entries[head];
    FUZZ_CHECK(e.in_flight == 0 || e.in_flight == 1);
    if (e.in_flight == 0)
      continue;
    FUZZ_CHECK(head < h.ring_size);
    FUZZ_CHECK(e.counter >= h.start_seq && e.counter <= h.pop_seq);
    if (r.finished_publish && head == layout::batch_head(h.batch))
      continue;
    expected.emplace_back(e.counter, static_cast<std::uint16_t>(head));
  }
  std::sort(expected.begin(), expected.end());
  FUZZ_CHECK(expected.size() == r.in_flight_oldest_first.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    FUZZ_CHECK(expected[i].second == r.in_flight_oldest_first[i]);
    FUZZ_CHECK(i == 0 || expected[i].first > expected[i - 1].first);
  }
  FUZZ_CHECK(r.finished_pop == (!expected.empty() && expected.back().first == h.pop_seq));
  FUZZ_CHECK(r.next_avail == static_cast<std::uint16_t>(h.pop_seq + (r.finished_pop ? 1 : 0)));
  FUZZ_CHECK(static_cast<std::uint16_t>(r.next_avail - r.used_idx - h.baseline) == expected.size());
}

void check_same(const QueueLog::Recovered &a, const QueueLog::Recovered &b) {
  FUZZ_CHECK(a.started == b.started);
  if (!a.started)
    return;
  FUZZ_CHECK(a.ring_size == b.ring_size);
  FUZZ_CHECK(a.next_avail == b.next_avail);
  FUZZ_CHECK(a.used_idx == b.used_idx);
  FUZZ_CHECK(a.in_flight_oldest_first == b.in_flight_oldest_first);
}

// The data path on a recovered (or freshly started) log, as the queue worker drives it, with a
// model of what must be in flight afterwards. A crash operation ends the script.
struct Model {
  std::uint16_t ring_size = 0;
  std::uint16_t next_avail = 0;
  std::uint16_t used = 0;
  std::vector<std::uint16_t> in_flight; // oldest first
  bool crashed_in_publish = false;
};

void run_script(QueueLog &log, const Fields &in, Model &m) {
  for (std::size_t i = 0; i < kScriptLen; ++i) {
    const std::uint8_t op = in.u8(kScriptAt + i);
    const unsigned arg = op & 63;
    switch (op >> 6) {
    case 0: // complete one request
    case 1: {
      if (m.in_flight.empty())
        break;
      const std::size_t k = arg % m.in_flight.size();
      const std::uint16_t head = m.in_flight[k];
      log.before_publish(head, m.used);
      ++m.used; // the ring's used->idx store
      log.after_publish(head, m.used);
      m.in_flight.erase(m.in_flight.begin() + static_cast<std::ptrdiff_t>(k));
      break;
    }
    case 2: { // pop a head (sometimes one outside the ring or already in flight)
      const auto head = static_cast<std::uint16_t>(arg);
      const bool fits =
          head < m.ring_size && std::find(m.in_flight.begin(), m.in_flight.end(), head) == m.in_flight.end();
      FUZZ_CHECK(log.popped(head) == fits);
      if (fits) {
        m.in_flight.push_back(head);
        ++m.next_avail;
      }
      break;
    }
    default: { // die in the middle of a pop or a completion
      if (arg & 1) {
        if (m.in_flight.empty())
          return;
        const std::uint16_t head = m.in_flight[(arg >> 1) % m.in_flight.size()];
        log.before_publish(head, m.used);
        ++m.used; // used->idx is in the ring, after_publish never happens
        m.in_flight.erase(std::find(m.in_flight.begin(), m.in_flight.end(), head));
        m.crashed_in_publish = true;
        return;
      }
      const auto head = static_cast<std::uint16_t>((arg >> 2) % m.ring_size);
      if (std::find(m.in_flight.begin(), m.in_flight.end(), head) != m.in_flight.end())
        return;
      int stores = 0;
      const int die_after = 1 + ((arg >> 1) & 1); // after P1 (nothing happened) or P2 (it did)
      FUZZ_CHECK(!QueueLogCrashHook::popped(log, head, [&] { return ++stores == die_after; }));
      if (die_after == 2) {
        m.in_flight.push_back(head);
        ++m.next_avail;
      }
      return;
    }
    }
  }
}

void follow_up(QueueLog &log, const Fields &in, const QueueLog::Recovered &r) {
  Model m;
  if (r.started) {
    m.ring_size = r.ring_size;
    m.next_avail = r.next_avail;
    m.used = r.used_idx;
    m.in_flight = r.in_flight_oldest_first;
  } else {
    // As on DRIVER_OK: a fresh start wherever the kernel says the ring is.
    m.ring_size = static_cast<std::uint16_t>(std::min<unsigned>(2u << (in.u8(kScriptAt) % 15), log.capacity()));
    m.next_avail = in.u16(kScriptAt + 1);
    m.used = in.u16(kScriptAt + 3);
    FUZZ_CHECK(log.start(m.ring_size, m.next_avail, m.used));
  }
  run_script(log, in, m);
  const QueueLog::Recovered after = log.recover(m.used);
  FUZZ_CHECK(after.started);
  FUZZ_CHECK(after.ring_size == m.ring_size);
  FUZZ_CHECK(after.next_avail == m.next_avail);
  FUZZ_CHECK(after.used_idx == m.used);
  FUZZ_CHECK(after.in_flight_oldest_first == m.in_flight);
  FUZZ_CHECK(after.finished_publish == m.crashed_in_publish);
}

std::uint16_t used_in_ring(std::uint8_t flags, const Fields &in, const QueueImage &img, unsigned q) {
  const auto logged = static_cast<std::uint16_t>(img.hdr.used_idx);
  switch ((flags >> 1) & 3) {
  case 0:
    return logged;
  case 1:
    return static_cast<std::uint16_t>(logged + 1);
  case 2:
    return static_cast<std::uint16_t>(logged + in.u8(kScriptAt + q % kScriptLen));
  default:
    return in.u16(kScriptAt + (2 * q) % kScriptLen);
  }
}

void recover_queue(RecoveryState &state, unsigned q, const std::string &file, std::uint8_t flags, const Fields &in) {
  const std::uint16_t capacity = state.identity().queue_size;
  QueueLog &log = state.queue(q);
  const QueueImage img = queue_image(file, q, capacity);
  const std::uint16_t used = used_in_ring(flags, in, img, q);
  QueueLog::Recovered r;
  try {
    r = log.recover(used);
  } catch (const StateError &e) {
    FUZZ_CHECK(std::string(e.what()).find(state.path() + ", queue " + std::to_string(q)) == 0);
    // A refused log is left as it was: the device is not served, the file stays for a human.
    FUZZ_CHECK(queue_bytes(read_file(state.path()), q, capacity) == queue_bytes(file, q, capacity));
    return;
  }
  check_recovered(img, capacity, used, r);
  check_same(log.recover(r.used_idx), r); // repaired: nothing left to repair
  FUZZ_CHECK(!log.recover(r.used_idx).finished_publish && !log.recover(r.used_idx).finished_pop);

  // Dying after any store of recover() and recovering again gives the same answer.
  const std::string original = queue_bytes(file, q, capacity);
  for (int die_after = 1;; ++die_after) {
    write_file(state.path(), original.data(), original.size(), layout::queue_offset(q, capacity), false);
    int stores = 0;
    const auto partial = QueueLogCrashHook::recover(log, used, [&] { return ++stores == die_after; });
    if (partial) {
      check_same(*partial, r);
      break;
    }
    check_same(log.recover(used), r);
  }
  follow_up(log, in, r);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t *data, std::size_t size) {
  if (size < kBodyAt)
    return 0;
  const Fields in(data, size);
  const std::uint8_t flags = in.u8(0);
  std::string file;
  DeviceIdentity id;
  if ((flags & 1) == 0) {
    file.assign(reinterpret_cast<const char *>(in.tail(kBodyAt)), in.tail_size(kBodyAt));
    id = identity_in(file);
  } else {
    const std::uint8_t geometry = in.u8(kBodyAt);
    id = default_identity();
    id.num_queues = 1 + (geometry & 3);
    id.queue_size = static_cast<std::uint16_t>(2u << ((geometry >> 2) % 8)); // 2..256
    file = real_header(id.num_queues, id.queue_size);
    file.resize(layout::file_size(id.num_queues, id.queue_size), '\0');
    const std::size_t body = std::min(in.tail_size(kBodyAt + 1), file.size() - layout::kHeaderSize);
    std::memcpy(file.data() + layout::kHeaderSize, in.tail(kBodyAt + 1), body);
  }
  DeviceIdentity configured = id;
  if (flags & 8)
    configured.features ^= 1; // the configuration changed since: the file must be refused
  if (flags & 16)
    configured.capacity += 512; // the storage was resized meanwhile: a resize, not another device
  const std::string path = RecoveryState::path_for(dir(), id.name);
  write_file(path, file.data(), file.size());

  std::unique_ptr<RecoveryState> state;
  try {
    state = RecoveryState::open_or_create(dir(), configured);
  } catch (const IdentityMismatch &e) {
    FUZZ_CHECK(!e.differences().empty());
    FUZZ_CHECK(!acceptable(file, configured));
    FUZZ_CHECK(read_file(path) == file); // nothing written to a refused file
  } catch (const StateError &e) {
    FUZZ_CHECK(std::string(e.what()).find(path) == 0);
    FUZZ_CHECK(!acceptable(file, configured));
    FUZZ_CHECK(read_file(path) == file);
  }
  if (state) {
    FUZZ_CHECK(acceptable(file, configured));
    FUZZ_CHECK(!state->created());
    FUZZ_CHECK(state->identity().capacity == id.capacity); // what the kernel's device has
    for (unsigned q = 0; q < state->num_queues(); ++q)
      recover_queue(*state, q, file, flags, in);
  }
  state.reset();
  ::unlink(path.c_str());
  return 0;
}
