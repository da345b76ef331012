#include "export/queue_worker.h"

#include "common/errors.h"
#include "common/log.h"

#include <cerrno>
#include <chrono>
#include <ctime>
#include <event2/event.h>
#include <future>
#include <linux/virtio_blk.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <utility>

namespace vb {

// Everything one in-flight request needs, preallocated: the mapped chain and the parsed request
// (whose iovecs the backend reads until completion). Big, so allocated once and recycled.
struct QueueWorker::Slot {
  QueueWorker *owner = nullptr;
  std::uint32_t generation = 0;
  std::uint64_t started_ns = 0; // when the chain was taken, for the latency histograms
  std::uint64_t pin = 0;        // GuestMemory pin: the chain's mappings stay valid until recycled
  virtio::Chain chain;
  blk::ParsedRequest req;
};

namespace {
// Chains popped per process() round before yielding to completions and other events.
constexpr unsigned kPopBudget = 128;

std::uint64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts); // vDSO: no system call
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

metrics::RequestKind kind_of(std::uint32_t type) noexcept {
  switch (type) {
  case VIRTIO_BLK_T_IN:
    return metrics::RequestKind::read;
  case VIRTIO_BLK_T_OUT:
    return metrics::RequestKind::write;
  case VIRTIO_BLK_T_FLUSH:
    return metrics::RequestKind::flush;
  case VIRTIO_BLK_T_DISCARD:
    return metrics::RequestKind::discard;
  case VIRTIO_BLK_T_WRITE_ZEROES:
    return metrics::RequestKind::write_zeroes;
  default:
    return metrics::RequestKind::other;
  }
}
} // namespace

QueueWorker::QueueWorker(std::string device_name, unsigned index, virtio::QueueHost &host, virtio::GuestMemory &memory,
                         Backend &backend, const blk::DeviceParams &params, recovery::QueueLog *log,
                         std::chrono::microseconds busy_poll)
    : name_(std::move(device_name) + "/q" + std::to_string(index)), index_(index), host_(host), memory_(memory),
      backend_(backend), params_(params), log_(log), notify_check_(loop_, [this] { notify(); }),
      reprocess_(loop_, [this] { process(); }), busy_poll_(busy_poll) {
  thread_ = std::thread([this] {
    if (busy_poll_.count() > 0)
      loop_.run_polling([this] { return poll_ring(); }, [this] { return before_sleep(); }, busy_poll_);
    else
      loop_.run();
  });
  run_sync([this] { backend_queue_ = backend_.open_queue(loop_, index_); });
}

QueueWorker::~QueueWorker() {
  run_sync([this] {
    drop_fenced(); // before cancel_all(): its completions would submit them
    if (backend_queue_)
      backend_queue_->cancel_all();
    unmap_ring();
    kick_watch_.reset();
    if (kick_fd_ >= 0)
      ::close(kick_fd_);
    kick_fd_ = -1;
    backend_queue_.reset();
  });
  loop_.stop_from_any_thread();
  thread_.join();
}

void QueueWorker::set_capacity(std::uint64_t bytes) {
  loop_.post([this, bytes] { params_.capacity = bytes; });
}

void QueueWorker::run_sync(const std::function<void()> &fn) {
  std::promise<void> done;
  loop_.post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}

// Worker thread: maps the ring at next_avail and installs a fresh kickfd. False if it cannot.
// Worker thread: the ring, mapped and pinned (its mappings outlive an UPDATE_IOTLB until
// remap_sync() has moved it), or nothing.
bool QueueWorker::map_ring(const virtio::RingLayout &layout, std::uint16_t next_avail, bool event_idx) noexcept {
  unmap_ring();
  const std::uint64_t pin = memory_.pin();
  if (!ring_.start(memory_, layout, next_avail, event_idx)) {
    memory_.unpin(pin);
    return false;
  }
  ring_pin_ = pin;
  return true;
}

void QueueWorker::unmap_ring() noexcept {
  if (!ring_.started())
    return;
  ring_.stop();
  memory_.unpin(ring_pin_);
}

bool QueueWorker::begin(const virtio::RingLayout &layout, std::uint16_t next_avail, bool event_idx) noexcept {
  if (!map_ring(layout, next_avail, event_idx)) {
    VB_LOG_ERROR("%s: cannot map the ring (desc 0x%llx, avail 0x%llx, used 0x%llx, size %u)", name_.c_str(),
                 static_cast<unsigned long long>(layout.desc), static_cast<unsigned long long>(layout.avail),
                 static_cast<unsigned long long>(layout.used), layout.num);
    return false;
  }
  broken_ = false;
  paused_ = false;
  in_flight_.clear();
  in_flight_.resize(layout.num);
  if (kick_fd_ < 0) {
    kick_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (kick_fd_ < 0) {
      VB_LOG_ERROR("%s: eventfd: %s", name_.c_str(), errno_text(errno));
      unmap_ring();
      return false;
    }
    kick_watch_ = std::make_unique<IoWatch>(loop_, kick_fd_, [this](short) { on_kick(); });
    // Edge-triggered: every eventfd write wakes epoll again, so the counter need not be read
    // (one read(2) less per kick); it cannot overflow in practice (2^64 kicks).
    kick_watch_->set_events(EV_READ | EV_ET);
  }
  try {
    host_.set_kickfd(index_, kick_fd_);
  } catch (const std::exception &e) {
    VB_LOG_ERROR("%s: %s", name_.c_str(), e.what());
    unmap_ring();
    return false;
  }
  pushed_ = false;
  return true;
}

bool QueueWorker::start_sync(const virtio::RingLayout &layout, std::uint16_t next_avail, bool event_idx) {
  bool ok = false;
  run_sync([&] {
    if (!begin(layout, next_avail, event_idx))
      return;
    if (log_ && !log_->start(layout.num, next_avail, ring_.used_idx())) {
      VB_LOG_ERROR("%s: a ring of %u does not fit the recovery state", name_.c_str(), layout.num);
      unmap_ring();
      return;
    }
    ok = true;
    // Buffers made available before our kickfd was installed sent their kick nowhere.
    process();
  });
  return ok;
}

// Worker thread, reattaching without a log to trust: nothing says which requests were in
// flight, so only a ring with nothing outstanding (used == avail) is served, from there, without
// losing or repeating one. The ring is mapped (at 0) on entry.
bool QueueWorker::serve_if_nothing_outstanding(const virtio::RingLayout &layout, bool event_idx) noexcept {
  const std::uint16_t used = ring_.used_idx();
  const std::uint16_t avail = ring_.pending(); // started at 0: the driver's avail index
  unmap_ring();
  if (avail != used) {
    VB_LOG_ERROR("%s: no recovery state that saw this ring, and requests outstanding (used %u, avail %u): the queue "
                 "is not served, so none is repeated or lost; restore the state directory or reset the device",
                 name_.c_str(), used, avail);
    return false;
  }
  if (!begin(layout, used, event_idx))
    return false;
  if (log_ && !log_->start(layout.num, used, used)) {
    VB_LOG_ERROR("%s: a ring of %u does not fit the recovery state", name_.c_str(), layout.num);
    unmap_ring();
    return false;
  }
  process();
  return true;
}

bool QueueWorker::resume_sync(const virtio::RingLayout &layout, bool event_idx, std::uint16_t kernel_avail,
                              bool log_trusted) {
  bool ok = false;
  bool fresh = false;
  run_sync([&] {
    if (ring_.started()) {
      VB_LOG_WARN("%s: already serving; not resumed again", name_.c_str());
      ok = true;
      return;
    }
    // Map first: the log is checked against what the used ring really holds.
    if (!begin(layout, 0, event_idx))
      return;
    if (!log_ || !log_trusted) {
      ok = serve_if_nothing_outstanding(layout, event_idx);
      return;
    }
    recovery::QueueLog::Recovered rec;
    try {
      rec = log_->recover(ring_.used_idx());
    } catch (const std::exception &e) {
      VB_LOG_ERROR("%s: %s; the queue is not served", name_.c_str(), e.what());
      unmap_ring();
      return;
    }
    if (!rec.started) {
      unmap_ring();
      fresh = true; // the predecessor never started this queue: nothing was in flight
      return;
    }
    if (rec.ring_size != layout.num) {
      VB_LOG_ERROR("%s: the recovery state describes a ring of %u, the driver's has %u; the queue is not served",
                   name_.c_str(), rec.ring_size, layout.num);
      unmap_ring();
      return;
    }
    if (!begin(layout, rec.next_avail, event_idx))
      return;
    VB_LOG_INFO("%s: resumed at avail %u, used %u; resubmitting %zu request(s) in flight%s", name_.c_str(),
                rec.next_avail, rec.used_idx, rec.in_flight_oldest_first.size(),
                rec.finished_publish ? " (a completion published at the crash was not repeated)" : "");
    for (std::uint16_t head : rec.in_flight_oldest_first) {
      std::unique_ptr<Slot> slot = take_slot();
      const virtio::PopResult r = ring_.chain_at(head, slot->chain);
      if (r == virtio::PopResult::broken) {
        recycle(std::move(slot));
        continue;
      }
      submit_chain(std::move(slot), r);
    }
    ok = true;
    process();
    // The predecessor may have published completions without an interrupt, and kicks sent
    // while no daemon was there went to the old kickfd: one interrupt lets the driver look.
    pushed_ = true;
    if (const int err = host_.inject_vq_irq(index_); err != 0)
      VB_LOG_WARN("%s: VDUSE_VQ_INJECT_IRQ: %s", name_.c_str(), errno_text(err));
  });
  if (fresh)
    return start_sync(layout, kernel_avail, event_idx);
  return ok;
}

void QueueWorker::remap_sync() {
  run_sync([this] {
    if (!ring_.started())
      return;
    const std::uint64_t pin = memory_.pin();
    if (!ring_.remap()) {
      memory_.unpin(pin);
      memory_.unpin(ring_pin_);
      VB_LOG_ERROR("%s: the driver's rings are no longer mapped after an IOTLB update; queue stopped until the "
                   "device is reset",
                   name_.c_str());
      stop_ring(true);
      return;
    }
    memory_.unpin(ring_pin_); // the old mappings of the rings are no longer needed
    ring_pin_ = pin;
  });
}

void QueueWorker::abandon_sync() {
  run_sync([this] { stop_ring(false); });
}

void QueueWorker::pause_sync() {
  run_sync([this] {
    paused_ = true;
    reprocess_.cancel();
  });
}

void QueueWorker::stop_sync() {
  run_sync([this] { stop_ring(true); });
}

void QueueWorker::stop_ring(bool reset_log) noexcept {
  if (ring_.started())
    stopped_next_avail_ = ring_.next_avail();
  unmap_ring();
  // A reset: nothing of this start is to be replayed by a successor.
  if (log_ && reset_log)
    log_->stop();
  ++generation_;
  drop_fenced();
  // Requests still in the backend keep their slots until they complete; their results are
  // dropped then (the driver reset the queue and no longer expects them).
  for (auto &slot : in_flight_)
    if (slot)
      (void)slot.release(); // owned by the backend now; on_backend_done recycles it
  in_flight_.clear();
  outstanding_old_ = outstanding_;
  // A reset (not a planned restart, whose successor resubmits): what the backend holds unsent
  // never reaches the storage now; what it sent completes, and the next driver's requests wait
  // for that (submit_fenced) so an old write cannot land after a new one.
  if (reset_log && backend_queue_ && outstanding_old_ > 0)
    backend_queue_->fence();
  notify_check_.cancel();
  reprocess_.cancel();
}

std::uint16_t QueueWorker::next_avail_sync() {
  std::uint16_t v = 0;
  run_sync([&] {
    if (ring_.started())
      v = ring_.next_avail();
    else if (log_ && log_->started())
      v = log_->next_avail(); // reattached, not resumed yet: where the predecessor stopped
    else
      v = stopped_next_avail_;
  });
  return v;
}

QueueStats QueueWorker::stats_sync() {
  QueueStats s;
  run_sync([&] {
    s = stats_;
    s.broken = broken_;
  });
  return s;
}

std::size_t QueueWorker::old_requests_sync() {
  std::size_t left = 0;
  run_sync([&] { left = outstanding_old_; });
  return left;
}

void QueueWorker::abandon_old_sync() {
  run_sync([this] {
    if (backend_queue_ && outstanding_old_ > 0) {
      VB_LOG_WARN("%s: %zu request(s) from before the reset still unanswered; abandoning them", name_.c_str(),
                  outstanding_old_);
      backend_queue_->abandon_fenced();
    }
  });
}

bool settle_queues(const std::vector<QueueWorker *> &queues, std::chrono::steady_clock::time_point abandon_at,
                   std::chrono::steady_clock::time_point give_up_at) {
  auto wait_until = [&](std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      std::size_t left = 0;
      for (QueueWorker *q : queues)
        left += q->old_requests_sync();
      if (left == 0)
        return true;
      if (std::chrono::steady_clock::now() >= deadline)
        return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  if (wait_until(abandon_at))
    return true;
  for (QueueWorker *q : queues) // every queue gets its abandon, whatever the others do
    q->abandon_old_sync();
  return wait_until(give_up_at);
}

bool QueueWorker::drain_sync(unsigned timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    std::size_t left = 0;
    run_sync([&] { left = outstanding_; });
    if (left == 0)
      return true;
    if (std::chrono::steady_clock::now() >= deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void QueueWorker::on_kick() noexcept { process(); }

// A recycled slot, or a new one (slots are big: allocated once per request in flight at peak).
// Pinned: what it maps stays valid until recycle().
std::unique_ptr<QueueWorker::Slot> QueueWorker::take_slot() {
  std::unique_ptr<Slot> slot;
  if (free_slots_.empty()) {
    slot = std::make_unique<Slot>();
    slot->owner = this;
  } else {
    slot = std::move(free_slots_.back());
    free_slots_.pop_back();
  }
  slot->pin = memory_.pin();
  return slot;
}

void QueueWorker::recycle(std::unique_ptr<Slot> slot) noexcept {
  memory_.unpin(slot->pin);
  free_slots_.push_back(std::move(slot));
}

void QueueWorker::process() noexcept {
  if (!ring_.started() || broken_ || paused_)
    return;
  unsigned budget = kPopBudget;
  for (;;) {
    ring_.disable_notifications();
    while (budget > 0) {
      std::unique_ptr<Slot> slot = take_slot();
      const virtio::PopResult r = ring_.pop(slot->chain);
      if (r == virtio::PopResult::empty) {
        recycle(std::move(slot));
        break;
      }
      if (r == virtio::PopResult::broken) {
        VB_LOG_ERROR("%s: the driver corrupted the available ring (%s); queue stopped until the device is reset",
                     name_.c_str(), virtio::to_string(ring_.last_error()));
        broken_ = true;
        recycle(std::move(slot));
        return;
      }
      --budget;
      if (log_ && !log_->popped(slot->chain.head)) {
        // Offered while still in flight (the log refuses it before anything is written).
        VB_LOG_ERROR("%s: the driver made head %u available twice; queue stopped until the device is reset",
                     name_.c_str(), slot->chain.head);
        broken_ = true;
        recycle(std::move(slot));
        return;
      }
      submit_chain(std::move(slot), r);
    }
    if (budget == 0) {
      // More may be waiting: come back after completions and other queues' events ran.
      reprocess_.schedule();
      break;
    }
    if (polling_)
      break; // kicks stay off: the polling thread looks at the ring again in a moment
    if (!ring_.enable_notifications())
      break;
  }
  if (budget < kPopBudget)
    activity_ = true;
  notify_check_.schedule();
}

// Busy polling (busy-poll-us): the ring, between passes over the loop's events. True when a
// chain was popped or a request completed since the last call (the polling window restarts).
bool QueueWorker::poll_ring() noexcept {
  polling_ = true;
  if (ring_.started() && !broken_ && !paused_ && ring_.pending() > 0)
    process();
  return std::exchange(activity_, false);
}

// The polling window ran out: kicks back on (a buffer made available meanwhile is found by the
// check after the fence in process()) before the thread sleeps.
bool QueueWorker::before_sleep() noexcept {
  polling_ = false;
  if (ring_.started() && !broken_ && !paused_ && ring_.enable_notifications())
    process();
  return std::exchange(activity_, false);
}

// A popped (or replayed) chain: a malformed one is failed at once, a valid one is handled.
void QueueWorker::submit_chain(std::unique_ptr<Slot> slot, virtio::PopResult r) noexcept {
  if (r == virtio::PopResult::bad_chain && in_flight_[slot->chain.head]) {
    // Its head is still ours: failing it now would hand the head back twice.
    VB_LOG_ERROR("%s: the driver made head %u available twice; queue stopped until the device is reset", name_.c_str(),
                 slot->chain.head);
    broken_ = true;
    recycle(std::move(slot));
    return;
  }
  if (r == virtio::PopResult::bad_chain) {
    ++stats_.bad_chains;
    counters_->record_bad_chain();
    if (stats_.bad_chains <= 10 || stats_.bad_chains % 1000 == 0)
      VB_LOG_WARN("%s: malformed descriptor chain at head %u: %s (request failed)", name_.c_str(), slot->chain.head,
                  virtio::to_string(ring_.last_error()));
    publish(slot->chain.head, ring_.mark_bad_chain(slot->chain, VIRTIO_BLK_S_IOERR));
    recycle(std::move(slot));
    return;
  }
  handle_chain(std::move(slot));
}

// Publishes one completion, bracketed by the in-flight log so that a crash anywhere in between
// is recovered without repeating or losing it.
void QueueWorker::publish(std::uint16_t head, std::uint32_t len) noexcept {
  if (log_)
    log_->before_publish(head, ring_.used_idx());
  ring_.push(head, len);
  if (log_)
    log_->after_publish(head, ring_.used_idx());
  pushed_ = true;
  notify_check_.schedule();
}

void QueueWorker::handle_chain(std::unique_ptr<Slot> slot) noexcept {
  const std::uint16_t head = slot->chain.head;
  if (in_flight_[head]) {
    // The driver offered a head that is still ours: answering both would hand it back twice.
    VB_LOG_ERROR("%s: the driver made head %u available twice; queue stopped until the device is reset", name_.c_str(),
                 head);
    broken_ = true;
    recycle(std::move(slot));
    return;
  }
  ++stats_.requests;
  blk::parse_request(slot->chain, params_, slot->req);
  Slot *s = slot.get();
  s->started_ns = now_ns();
  s->generation = generation_;
  in_flight_[head] = std::move(slot);
  if (!s->req.needs_backend()) {
    complete(s, 0);
    return;
  }
  if (outstanding_old_ > 0) {
    fenced_.push_back(s); // the previous driver's requests are still finishing in the backend
    return;
  }
  submit_to_backend(s);
}

void QueueWorker::submit_to_backend(Slot *s) noexcept {
  ++outstanding_;
  counters_->set_in_flight(outstanding_);
  const int rc = backend_queue_->submit(s->req.backend, &QueueWorker::on_backend_done, s);
  if (rc != 0) {
    --outstanding_;
    counters_->set_in_flight(outstanding_);
    complete(s, rc);
  }
  // On success the slot may already be completed and recycled (inline completion): not touched.
}

// Requests waiting for a fence never reached the backend: the driver no longer expects them.
void QueueWorker::drop_fenced() noexcept {
  for (Slot *s : fenced_) {
    (void)in_flight_[s->chain.head].release(); // owned by fenced_ until now
    recycle(std::unique_ptr<Slot>(s));
  }
  fenced_.clear();
}

// The last request from before a reset has finished: the new driver's requests go out, oldest first.
void QueueWorker::submit_fenced() noexcept {
  std::vector<Slot *> waiting;
  waiting.swap(fenced_);
  for (Slot *s : waiting)
    submit_to_backend(s);
}

void QueueWorker::on_backend_done(void *ctx, int error) noexcept {
  auto *slot = static_cast<Slot *>(ctx);
  QueueWorker *self = slot->owner;
  --self->outstanding_;
  self->counters_->set_in_flight(self->outstanding_);
  if (slot->generation != self->generation_) {
    // Completed after a reset: the driver no longer expects it; just recycle the slot.
    self->recycle(std::unique_ptr<Slot>(slot));
    if (self->outstanding_old_ > 0 && --self->outstanding_old_ == 0)
      self->submit_fenced();
    return;
  }
  self->complete(slot, error);
}

void QueueWorker::complete(Slot *slot, int error) noexcept {
  const std::uint32_t len = blk::finish_request(slot->req, error);
  const bool failed = slot->req.action == blk::Action::submit ? error != 0 : slot->req.status != VIRTIO_BLK_S_OK;
  if (failed)
    ++stats_.errors;
  const metrics::RequestKind kind = kind_of(slot->req.type);
  const bool data = kind == metrics::RequestKind::read || kind == metrics::RequestKind::write;
  counters_->record_completion(kind, data ? slot->req.backend.length : 0, now_ns() - slot->started_ns, !failed);
  activity_ = true;
  publish(slot->chain.head, len);
  release(slot);
}

void QueueWorker::release(Slot *slot) noexcept { recycle(std::move(in_flight_[slot->chain.head])); }

void QueueWorker::notify() noexcept {
  // Only after something was published: an interrupt for nothing costs the driver a wasted scan.
  if (!pushed_ || !ring_.started())
    return;
  pushed_ = false;
  if (!ring_.should_notify())
    return;
  ++stats_.interrupts;
  counters_->record_interrupt();
  if (const int err = host_.inject_vq_irq(index_); err != 0)
    VB_LOG_WARN("%s: VDUSE_VQ_INJECT_IRQ: %s", name_.c_str(), errno_text(err));
}

} // namespace vb
