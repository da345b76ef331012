#include "recovery/queue_log.h"

#include "recovery/state_error.h"

#include <algorithm>
#include <atomic>
#include <utility>

namespace vb::recovery {
namespace {

// Every access to the mapped log is atomic: another process may read it at any time (after we
// died) and must see whole values, and release stores keep the order that recovery relies on.
template <class T> T load_relaxed(T &v) noexcept { return std::atomic_ref<T>(v).load(std::memory_order_relaxed); }
template <class T> T load_acquire(T &v) noexcept { return std::atomic_ref<T>(v).load(std::memory_order_acquire); }
template <class T> void store_relaxed(T &v, T x) noexcept { std::atomic_ref<T>(v).store(x, std::memory_order_relaxed); }
template <class T> void store_release(T &v, T x) noexcept { std::atomic_ref<T>(v).store(x, std::memory_order_release); }

struct NeverDie {
  constexpr bool operator()() const noexcept { return false; }
};

// Wraps a test's die() and remembers whether it fired.
struct RecordingDie {
  const QueueLogCrashHook::Die &die;
  bool died = false;
  bool operator()() {
    died = died || die();
    return died;
  }
};

bool valid_ring_size(std::uint32_t n, std::uint32_t capacity) { return n != 0 && n <= capacity && (n & (n - 1)) == 0; }

std::string str(std::uint64_t v) { return std::to_string(v); }

} // namespace

void QueueLog::attach(unsigned index, void *base, std::uint16_t capacity, std::string label) noexcept {
  index_ = index;
  hdr_ = static_cast<layout::QueueHeader *>(base);
  entries_ = reinterpret_cast<layout::Entry *>(static_cast<char *>(base) + sizeof(layout::QueueHeader));
  capacity_ = capacity;
  label_ = std::move(label);
}

bool QueueLog::started() const noexcept { return load_relaxed(hdr_->started) == 1; }
std::uint16_t QueueLog::ring_size() const noexcept { return static_cast<std::uint16_t>(load_relaxed(hdr_->ring_size)); }
std::uint16_t QueueLog::next_avail() const noexcept { return static_cast<std::uint16_t>(load_relaxed(hdr_->pop_seq)); }
std::uint16_t QueueLog::used_idx() const noexcept { return static_cast<std::uint16_t>(load_relaxed(hdr_->used_idx)); }
bool QueueLog::in_flight(std::uint16_t head) const noexcept {
  return head < capacity_ && load_relaxed(entries_[head].in_flight) != 0;
}

template <class Die>
bool QueueLog::start_impl(std::uint16_t ring_size, std::uint16_t next_avail, std::uint16_t used, Die &&die) {
  if (!valid_ring_size(ring_size, capacity_))
    return false;
  // Above every counter of earlier starts (they are <= pop_seq), with next_avail as low 16 bits.
  const std::uint64_t seq = (((load_relaxed(hdr_->pop_seq) >> 16) + 1) << 16) | next_avail;
  // Not started while the fields change: dying halfway must not look like a live ring.
  store_release(hdr_->started, 0u);
  if (die())
    return true;
  for (std::uint32_t h = 0; h < capacity_; ++h) {
    if (load_relaxed(entries_[h].in_flight) == 0)
      continue;
    store_relaxed(entries_[h].in_flight, 0u);
    if (die())
      return true;
  }
  store_relaxed(hdr_->batch, std::uint64_t{0});
  if (die())
    return true;
  store_relaxed(hdr_->start_seq, seq);
  if (die())
    return true;
  store_relaxed(hdr_->pop_seq, seq);
  if (die())
    return true;
  store_relaxed(hdr_->used_idx, std::uint32_t{used});
  if (die())
    return true;
  store_relaxed(hdr_->ring_size, std::uint32_t{ring_size});
  if (die())
    return true;
  store_relaxed(hdr_->baseline, std::uint32_t{static_cast<std::uint16_t>(next_avail - used)});
  if (die())
    return true;
  store_release(hdr_->started, 1u); // after every field above
  (void)die();
  return true;
}

template <class Die> void QueueLog::stop_impl(Die &&die) {
  store_release(hdr_->started, 0u);
  (void)die();
}

template <class Die> bool QueueLog::popped_impl(std::uint16_t head, Die &&die) {
  if (head >= capacity_ || head >= load_relaxed(hdr_->ring_size) || load_relaxed(hdr_->started) != 1)
    return false;
  layout::Entry &e = entries_[head];
  if (load_relaxed(e.in_flight) != 0)
    return false;
  const std::uint64_t seq = load_relaxed(hdr_->pop_seq);
  store_relaxed(e.counter, seq); // P1: meaningless until P2
  if (die())
    return true;
  store_release(e.in_flight, 1u); // P2: after P1
  if (die())
    return true;
  store_release(hdr_->pop_seq, seq + 1); // P3: after P2, or the request could be lost
  (void)die();
  return true;
}

template <class Die> void QueueLog::before_publish_impl(std::uint16_t head, std::uint16_t used_before, Die &&die) {
  // B1: after the previous completion's A2 (or recovery would see a batch for a used index the
  // log has not reached), and before used->idx (the ring's own release store orders that).
  store_release(hdr_->batch, layout::pack_batch(head, used_before));
  (void)die();
}

template <class Die> void QueueLog::after_publish_impl(std::uint16_t head, std::uint16_t used_after, Die &&die) {
  if (head >= capacity_)
    return;
  store_release(entries_[head].in_flight, 0u); // A1: after used->idx, or a crash could lose it
  if (die())
    return;
  store_release(hdr_->used_idx, std::uint32_t{used_after}); // A2: after A1
  (void)die();
}

template <class Die> QueueLog::Recovered QueueLog::recover_impl(std::uint16_t used_in_ring, Die &&die) {
  const auto corrupt = [this](const std::string &what) { return StateError(label_ + " is corrupt: " + what); };
  Recovered r;
  const std::uint32_t started = load_acquire(hdr_->started);
  if (started == 0)
    return r;
  if (started != 1)
    throw corrupt("the started flag is " + str(started));
  const std::uint32_t ring_size = load_relaxed(hdr_->ring_size);
  if (!valid_ring_size(ring_size, capacity_))
    throw corrupt("the ring size " + str(ring_size) + " is not a power of two up to the queue size " + str(capacity_));
  const std::uint32_t used32 = load_relaxed(hdr_->used_idx);
  const std::uint32_t baseline = load_relaxed(hdr_->baseline);
  if (used32 > 0xffff || baseline > 0xffff)
    throw corrupt("the used index " + str(used32) + " or the baseline " + str(baseline) + " exceeds 16 bits");
  const auto used = static_cast<std::uint16_t>(used32);
  const std::uint64_t seq = load_relaxed(hdr_->pop_seq);
  const std::uint64_t start_seq = load_relaxed(hdr_->start_seq);
  if (seq < start_seq)
    throw corrupt("the pop sequence " + str(seq) + " is below the start sequence " + str(start_seq));
  const std::uint64_t batch = load_relaxed(hdr_->batch);

  // Everything is checked before anything is written: a log refused is left as it was.
  // 1. A completion whose used->idx store happened but whose after_publish did not.
  bool publish_done = false;
  std::uint16_t published = 0;
  if (used_in_ring != used) {
    if (used_in_ring != static_cast<std::uint16_t>(used + 1) || !layout::batch_valid(batch) ||
        layout::batch_used_before(batch) != used)
      throw StateError(label_ + ": the used ring's index is " + str(used_in_ring) + " but the log last published " +
                       str(used) + ", and no completion in progress explains it (another ring, or the driver wrote " +
                       "its used ring)");
    published = layout::batch_head(batch);
    if (published >= ring_size)
      throw corrupt("the head being published, " + str(published) + ", is outside the ring of " + str(ring_size));
    publish_done = true;
  }

  // 2. The in-flight set, oldest first.
  std::vector<std::pair<std::uint64_t, std::uint16_t>> in_flight;
  for (std::uint32_t h = 0; h < capacity_; ++h) {
    const std::uint32_t flag = load_relaxed(entries_[h].in_flight);
    if (flag == 0)
      continue;
    if (flag != 1)
      throw corrupt("head " + str(h) + " has the in-flight flag " + str(flag));
    if (h >= ring_size)
      throw corrupt("head " + str(h) + " is in flight but outside the ring of " + str(ring_size));
    const std::uint64_t counter = load_relaxed(entries_[h].counter);
    if (counter < start_seq || counter > seq)
      throw corrupt("head " + str(h) + " has the order counter " + str(counter) + ", outside this start's pops [" +
                    str(start_seq) + ", " + str(seq) + "]");
    if (publish_done && h == published)
      continue;
    in_flight.emplace_back(counter, static_cast<std::uint16_t>(h));
  }
  std::sort(in_flight.begin(), in_flight.end());
  for (std::size_t i = 1; i < in_flight.size(); ++i)
    if (in_flight[i].first == in_flight[i - 1].first)
      throw corrupt("heads " + str(in_flight[i - 1].second) + " and " + str(in_flight[i].second) +
                    " have the same order counter " + str(in_flight[i].first));

  // 3. A pop whose in-flight mark happened but whose advance did not: only then is a counter
  // equal to pop_seq.
  const bool pop_done = !in_flight.empty() && in_flight.back().first == seq;
  const std::uint64_t new_seq = pop_done ? seq + 1 : seq;
  const std::uint16_t new_used = publish_done ? used_in_ring : used;

  // 4. Every pop of this start is either in flight or published.
  const auto expected = static_cast<std::uint16_t>(static_cast<std::uint16_t>(new_seq) - new_used - baseline);
  if (in_flight.size() != expected)
    throw corrupt(str(in_flight.size()) + " heads are in flight, but next avail " +
                  str(static_cast<std::uint16_t>(new_seq)) + ", used " + str(new_used) + " and baseline " +
                  str(baseline) + " say " + str(expected) + " (a pop or a completion bypassed the log)");

  // 5. Repair with the data path's stores, in its order.
  if (publish_done) {
    store_release(entries_[published].in_flight, 0u);
    if (die())
      return {};
    store_release(hdr_->used_idx, std::uint32_t{used_in_ring});
    if (die())
      return {};
  }
  if (pop_done) {
    store_release(hdr_->pop_seq, new_seq);
    if (die())
      return {};
  }

  r.started = true;
  r.ring_size = static_cast<std::uint16_t>(ring_size);
  r.next_avail = static_cast<std::uint16_t>(new_seq);
  r.used_idx = new_used;
  r.in_flight_oldest_first.reserve(in_flight.size());
  for (const auto &[counter, head] : in_flight)
    r.in_flight_oldest_first.push_back(head);
  r.finished_publish = publish_done;
  r.finished_pop = pop_done;
  return r;
}

bool QueueLog::start(std::uint16_t ring_size, std::uint16_t next_avail, std::uint16_t used_idx) noexcept {
  return start_impl(ring_size, next_avail, used_idx, NeverDie{});
}
void QueueLog::stop() noexcept { stop_impl(NeverDie{}); }
bool QueueLog::popped(std::uint16_t head) noexcept { return popped_impl(head, NeverDie{}); }
void QueueLog::before_publish(std::uint16_t head, std::uint16_t used_idx_before) noexcept {
  before_publish_impl(head, used_idx_before, NeverDie{});
}
void QueueLog::after_publish(std::uint16_t head, std::uint16_t used_idx_after) noexcept {
  after_publish_impl(head, used_idx_after, NeverDie{});
}
QueueLog::Recovered QueueLog::recover(std::uint16_t used_idx_in_ring) {
  return recover_impl(used_idx_in_ring, NeverDie{});
}

bool QueueLogCrashHook::start(QueueLog &log, std::uint16_t ring_size, std::uint16_t next_avail, std::uint16_t used_idx,
                              const Die &die, bool *result) {
  RecordingDie d{die};
  const bool ok = log.start_impl(ring_size, next_avail, used_idx, d);
  if (result)
    *result = ok;
  return !d.died;
}

bool QueueLogCrashHook::stop(QueueLog &log, const Die &die) {
  RecordingDie d{die};
  log.stop_impl(d);
  return !d.died;
}

bool QueueLogCrashHook::popped(QueueLog &log, std::uint16_t head, const Die &die, bool *result) {
  RecordingDie d{die};
  const bool ok = log.popped_impl(head, d);
  if (result)
    *result = ok;
  return !d.died;
}

bool QueueLogCrashHook::before_publish(QueueLog &log, std::uint16_t head, std::uint16_t used_idx_before,
                                       const Die &die) {
  RecordingDie d{die};
  log.before_publish_impl(head, used_idx_before, d);
  return !d.died;
}

bool QueueLogCrashHook::after_publish(QueueLog &log, std::uint16_t head, std::uint16_t used_idx_after, const Die &die) {
  RecordingDie d{die};
  log.after_publish_impl(head, used_idx_after, d);
  return !d.died;
}

std::optional<QueueLog::Recovered> QueueLogCrashHook::recover(QueueLog &log, std::uint16_t used_idx_in_ring,
                                                              const Die &die) {
  RecordingDie d{die};
  QueueLog::Recovered r = log.recover_impl(used_idx_in_ring, d);
  if (d.died)
    return std::nullopt;
  return r;
}

} // namespace vb::recovery
