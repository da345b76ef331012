#include "iscsi/iscsi_multipath.h"

#include "common/log.h"
#include "common/units.h"

#include <algorithm>
#include <cerrno>
#include <iscsi/iscsi.h>

namespace vb {

IscsiPathSet::IscsiPathSet(EventLoop &loop, std::shared_ptr<const IscsiTarget> target, iscsi_context *first,
                           unsigned first_path, std::uint64_t first_key, unsigned index, std::string name)
    : target_(std::move(target)), name_(std::move(name)), health_(target_->sessions), first_key_(first_key),
      redispatch_(loop, [this] { redispatch(); }), tick_(loop, [this] { on_tick(); }) {
  const std::size_t n = target_->paths.size();
  target_->path_book.add_queue();
  paths_.reserve(n);
  waiting_.reserve(256);
  for (unsigned p = 0; p < n; ++p) {
    auto path = std::make_unique<Path>();
    path->set = this;
    path->index = p;
    path->unfenced.reserve(16);
    paths_.push_back(std::move(path));
  }
  // Sessions after every Path exists: an adopted one reports ready from its constructor. The
  // adopted one last: if making another throws, first is still the caller's to destroy.
  std::vector<unsigned> order;
  for (unsigned p = 0; p < n; ++p)
    if (!first || p != first_path)
      order.push_back(p);
  if (first && first_path < n)
    order.push_back(first_path);
  for (unsigned p : order) {
    iscsi_context *ctx = first && p == first_path ? first : nullptr;
    Path &path = *paths_[p];
    path.session = std::make_unique<IscsiSession>(
        loop, target_, ctx, index, name_ + " path " + std::to_string(p) + " (" + target_->paths[p].portal + ")", p,
        &path, &paths_health_);
    if (ctx)
      path.session->set_pr_key(first_key_);
  }
  if (ready_paths() == 0) {
    down_ = true; // logging in: requests wait, reconnect-timeout counts from now
    down_since_ = SessionClock::now();
  }
  tick_.arm_periodic(SessionCore::kTick);
}

IscsiPathSet::~IscsiPathSet() {
  cancel_all();
  tick_.cancel();
  redispatch_.cancel();
  std::vector<bool> counted;
  for (const auto &p : paths_)
    counted.push_back(p->counted);
  target_->path_book.remove_queue(counted);
  paths_.clear(); // the sessions go while this object is still whole
}

std::size_t IscsiPathSet::ready_paths() const noexcept {
  return static_cast<std::size_t>(
      std::count_if(paths_.begin(), paths_.end(), [](const std::unique_ptr<Path> &p) { return p->ready; }));
}

int IscsiPathSet::submit(const Request &req, CompletionFn done, void *ctx) noexcept {
  if (cancelled_)
    return ECANCELED;
  if (fail_fast_)
    return EIO; // no path for longer than reconnect-timeout
  Forwarded *f = pool_.take();
  if (!f)
    return ENOMEM;
  f->req = req;
  f->done = done;
  f->ctx = ctx;
  f->set = this;
  f->seq = ++seq_;
  f->complete_with = 0;
  f->refusals = 0;
  f->held_since = {};
  dispatch(f);
  return 0;
}

bool IscsiPathSet::fencing_on() const noexcept {
  return target_->options.fencing == IscsiOptions::Fencing::persistent_reservation;
}

namespace {
// What changes the LUN's data: a copy of it that runs late can undo a newer write.
bool changes_data(Op op) noexcept { return op == Op::write || op == Op::discard || op == Op::write_zeroes; }
constexpr unsigned kMaxRefusals = 64; // ALUA refusals of one request (each after a new read of the states)
} // namespace

void IscsiPathSet::hold_for_fence(Forwarded *f, std::uint64_t victim) noexcept {
  Path &path = *paths_[f->path];
  f->victim = victim;
  if (f->held_since == SessionClock::time_point{})
    f->held_since = SessionClock::now(); // reconnect-timeout counts from the first hold
  try {
    // (unfenced has room reserved for its keys: one per login lost, preempted one by one)
    if (std::find(path.unfenced.begin(), path.unfenced.end(), victim) == path.unfenced.end())
      path.unfenced.push_back(victim);
    path.fenced_out.push_back(f);
  } catch (const std::bad_alloc &) {
    finish(f, f->complete_with != 0 ? f->complete_with : EIO);
    return;
  }
  if (!path.fencing)
    start_fence(path);
}

bool IscsiPathSet::hold_behind_fence(Forwarded *f) noexcept {
  if (!fencing_on() || !changes_data(f->req.op))
    return false;
  for (auto &p : paths_)
    if (!p->unfenced.empty()) {
      f->path = p->index;
      hold_for_fence(f, p->unfenced.front());
      return true;
    }
  return false;
}

template <typename Fenced> void IscsiPathSet::release_fenced(Path &path, Fenced fenced) noexcept {
  std::size_t kept = 0;
  bool any = false;
  for (Forwarded *f : path.fenced_out) {
    if (!fenced(f)) {
      path.fenced_out[kept++] = f;
      continue;
    }
    any = true;
    if (f->complete_with != 0) {
      finish(f, f->complete_with); // from before a reset: completes, never sent again
      continue;
    }
    try {
      waiting_.push_back(f);
    } catch (const std::bad_alloc &) {
      finish(f, EIO);
    }
  }
  path.fenced_out.resize(kept);
  if (any)
    redispatch_.schedule();
}

// From a live path: PREEMPT the key a dead path's writes were sent under. That nexus can then no
// longer write, and what waited for it goes.
void IscsiPathSet::start_fence(Path &dead) noexcept {
  if (dead.unfenced.empty() || cancelled_)
    return;
  const std::uint64_t victim = dead.unfenced.front();
  if (victim == dead.session->pr_key() && dead.session->connected())
    return; // never preempt a live session (cannot happen: a held write was lost with its nexus)
  const auto now = SessionClock::now();
  if (now < dead.fence_next_try)
    return;
  for (auto &p : paths_) {
    if (p.get() == &dead || !p->ready || !p->session->connected())
      continue;
    const unsigned dead_index = dead.index, from = p->index;
    const bool sent = p->session->preempt(victim, [this, dead_index, from, victim](bool ok, const std::string &why) {
      Path &d = *paths_[dead_index];
      d.fencing = false;
      if (!ok) {
        d.fence_next_try = SessionClock::now() + std::chrono::seconds(1);
        VB_LOG_WARN("%s: fencing path %u from path %u failed (%s); its writes wait, and it is tried again",
                    name_.c_str(), dead_index, from, why.c_str());
        return;
      }
      VB_LOG_INFO("%s: path %u fenced (its key preempted from path %u): its writes go out again", name_.c_str(),
                  dead_index, from);
      d.unfenced.erase(std::remove(d.unfenced.begin(), d.unfenced.end(), victim), d.unfenced.end());
      release_fenced(d, [victim](const Forwarded *f) { return f->victim == victim; });
      start_fence(d); // writes of another of its logins may wait too
    });
    if (sent) {
      dead.fencing = true;
      dead.fencing_from = from;
      dead.fencing_context = p->session->context_generation();
      dead.fencing_since = now;
      return;
    }
  }
  // No live path can send it now: tried again on the next tick, or its own next login fences it.
}

// Held longer than reconnect-timeout (no path could fence it): the request fails, as it would
// with no path at all.
void IscsiPathSet::expire_fenced(Path &path) noexcept {
  const auto limit = target_->options.reconnect_timeout;
  const auto now = SessionClock::now();
  std::size_t kept = 0, failed = 0;
  for (Forwarded *f : path.fenced_out) {
    if (std::chrono::duration_cast<std::chrono::milliseconds>(now - f->held_since) < limit) {
      path.fenced_out[kept++] = f;
      continue;
    }
    ++failed;
    finish(f, f->complete_with != 0 ? f->complete_with : EIO);
  }
  path.fenced_out.resize(kept);
  if (failed > 0)
    VB_LOG_ERROR("%s: path %u could not be fenced within %s (reconnect-timeout): %zu of its write(s) fail",
                 name_.c_str(), path.index, format_duration(limit).c_str(), failed);
}

int IscsiPathSet::rank(unsigned p) const noexcept {
  // Ready as the path said, and as its session is now (it may have gone without saying yet).
  const Path &path = *paths_[p];
  if (!path.ready || !path.session || !path.session->connected())
    return -1;
  return alua_rank(path.session->access());
}

bool IscsiPathSet::any_carries_io() const noexcept {
  for (unsigned p = 0; p < paths_.size(); ++p)
    if (rank(p) >= 0)
      return true;
  return false;
}

int IscsiPathSet::pick() noexcept {
  const unsigned n = static_cast<unsigned>(paths_.size());
  // ALUA first: only paths of the best rank there is (active/optimized, else non-optimized).
  int best = -1;
  for (unsigned p = 0; p < n; ++p)
    if (const int r = rank(p); r >= 0 && (best < 0 || r < best))
      best = r;
  if (best < 0)
    return -1;
  auto usable = [this, best](unsigned p) { return rank(p) == best; };
  if (target_->options.path_policy == IscsiOptions::PathPolicy::failover) {
    for (unsigned p = 0; p < n; ++p)
      if (usable(p))
        return static_cast<int>(p);
    return -1;
  }
  for (unsigned k = 0; k < n; ++k) {
    const unsigned p = (next_ + k) % n;
    if (usable(p)) {
      next_ = (p + 1) % n;
      return static_cast<int>(p);
    }
  }
  return -1;
}

void IscsiPathSet::dispatch(Forwarded *f) noexcept {
  if (hold_behind_fence(f))
    return;
  for (std::size_t tries = 0; tries < paths_.size(); ++tries) {
    const int p = pick();
    if (p < 0)
      break;
    f->path = static_cast<unsigned>(p);
    const int rc = paths_[f->path]->session->submit(f->req, &IscsiPathSet::on_path_done, f);
    if (rc == 0)
      return;
    if (rc != kHandedBack) {
      finish(f, rc); // the request itself is refused (out of range, not whole blocks, ENOMEM)
      return;
    }
  }
  if (fail_fast_) {
    finish(f, EIO); // no path for longer than reconnect-timeout: as new requests do
    return;
  }
  if (!down_) {
    down_ = true;
    down_since_ = SessionClock::now();
    if (ready_paths() > 0) // logged in, but no port takes I/O (ALUA standby, unavailable...)
      try {
        why_down_ = "no path's port takes I/O now (ALUA)";
        update_health();
      } catch (...) {
      }
  }
  try {
    waiting_.push_back(f);
  } catch (const std::bad_alloc &) {
    finish(f, ENOMEM);
  }
}

void IscsiPathSet::on_path_done(void *ctx, int error) noexcept {
  auto *f = static_cast<Forwarded *>(ctx);
  IscsiPathSet *self = f->set;
  Path &path = *self->paths_[f->path];
  if (error == kPathRefused) {
    // The path's port refused every command of it (ALUA standby, unavailable, transitioning):
    // nothing ran, so no fence is needed; another path takes it. Bounded, should a target keep
    // saying active in REPORT TARGET PORT GROUPS and refuse the I/O.
    if (!self->cancelled_ && ++f->refusals > kMaxRefusals) {
      self->finish(f, EIO);
      return;
    }
    self->fail_over(f);
    return;
  }
  if (self->fencing_on() && !self->cancelled_ && changes_data(f->req.op) && error != 0 &&
      (error == kHandedBack || !path.session->connected())) {
    // Lost with its path: the target may still run it, unless the nexus it went on is fenced
    // (a key of 0: never registered, and under the reservation it cannot write).
    if (const std::uint64_t victim = path.session->pr_key(); victim != 0) {
      if (error == kHandedBack) {
        ++self->failovers_;
        self->target_->path_book.failed_over(f->path, 1);
      } else {
        f->complete_with = error; // from before a reset (ECANCELED) or failed: completes once fenced
      }
      self->hold_for_fence(f, victim);
      return;
    }
  }
  if (error != kHandedBack) {
    self->finish(f, error);
    return;
  }
  // Lost with its path's session: it goes out again on another path.
  self->fail_over(f);
}

// f goes out again on another path, from the loop (this may run inside the path's session
// teardown, or its completion).
void IscsiPathSet::fail_over(Forwarded *f) noexcept {
  ++failovers_;
  target_->path_book.failed_over(f->path, 1);
  if (cancelled_) {
    finish(f, ECANCELED);
    return;
  }
  try {
    waiting_.push_back(f);
  } catch (const std::bad_alloc &) {
    finish(f, EIO);
    return;
  }
  redispatch_.schedule();
}

void IscsiPathSet::finish(Forwarded *f, int error) noexcept {
  const CompletionFn done = f->done;
  void *ctx = f->ctx;
  f->done = nullptr;
  pool_.give(f); // never allocates (JobPool)
  done(ctx, error);
}

void IscsiPathSet::redispatch() noexcept {
  if (waiting_.empty() || ready_paths() == 0)
    return;
  std::vector<Forwarded *> now;
  now.swap(waiting_);
  try {
    waiting_.reserve(now.size());
  } catch (const std::bad_alloc &) {
  }
  std::sort(now.begin(), now.end(), [](const Forwarded *a, const Forwarded *b) { return a->seq < b->seq; });
  for (Forwarded *f : now)
    dispatch(f);
}

void IscsiPathSet::on_path_changed(Path &path, bool ready) noexcept {
  path.ready = ready;
  if (ready && path.session && !path.unfenced.empty()) {
    // Its login registered a new key and preempted the slot's older ones (every key of this
    // path in this queue is of that slot).
    const std::uint64_t now_key = path.session->pr_key();
    path.unfenced.erase(
        std::remove_if(path.unfenced.begin(), path.unfenced.end(), [now_key](std::uint64_t k) { return k != now_key; }),
        path.unfenced.end());
    release_fenced(path, [now_key](const Forwarded *f) { return f->victim != now_key; });
  }
  if (ready != path.counted) {
    target_->path_book.set_up(path.index, ready);
    path.counted = ready;
  }
  if (!ready && path.session)
    report_error(path);
  if (ready && any_carries_io()) {
    if (down_) {
      const double down_s = std::chrono::duration<double>(SessionClock::now() - down_since_).count();
      if (!why_down_.empty())
        VB_LOG_INFO("%s: path %u (%s) is back after %.1fs without a path; %zu request(s) go out on it", name_.c_str(),
                    path.index, target_->paths[path.index].portal.c_str(), down_s, waiting_.size());
      down_ = false;
      why_down_.clear();
    } else if (!path.session || rank(path.index) >= 0) {
      VB_LOG_INFO("%s: path %u (%s) is ready", name_.c_str(), path.index, target_->paths[path.index].portal.c_str());
    } else {
      VB_LOG_INFO("%s: path %u (%s) is logged in; its port takes no I/O now (ALUA %s)", name_.c_str(), path.index,
                  target_->paths[path.index].portal.c_str(), alua_state_name(path.session->access()));
    }
    fail_fast_ = false;
    redispatch_.schedule();
  } else if (ready && path.session) { // (an adopted session says ready from its constructor)
    VB_LOG_INFO("%s: path %u (%s) is logged in; its port takes no I/O now (ALUA %s)", name_.c_str(), path.index,
                target_->paths[path.index].portal.c_str(), alua_state_name(path.session->access()));
  } else if (path.session) {
    const std::size_t left = ready_paths();
    VB_LOG_WARN("%s: path %u (%s) is down (%s); %zu path(s) left", name_.c_str(), path.index,
                target_->paths[path.index].portal.c_str(), path.session->last_error().c_str(), left);
    if (left == 0 && !down_) {
      down_ = true;
      down_since_ = SessionClock::now();
      why_down_ = "every path is down; last: " + path.session->last_error();
    }
  }
  update_health();
}

void IscsiPathSet::on_access_changed(Path &path) noexcept {
  if (!path.session)
    return; // being made: on_path_changed() follows
  target_->path_book.set_access(path.index, alua_state_name(path.session->access()));
  if (!path.ready)
    return;
  if (any_carries_io()) {
    if (down_) {
      VB_LOG_INFO("%s: path %u (%s) takes I/O again (ALUA %s); %zu request(s) go out", name_.c_str(), path.index,
                  target_->paths[path.index].portal.c_str(), alua_state_name(path.session->access()), waiting_.size());
      down_ = false;
      why_down_.clear();
    }
    fail_fast_ = false;
    redispatch_.schedule();
  }
  update_health();
}

void IscsiPathSet::on_access_announced() noexcept {
  for (auto &p : paths_)
    if (p->session)
      p->session->refresh_access();
}

void IscsiPathSet::update_health() noexcept {
  if (!down_)
    health_.set(Backend::State::connected);
  else if (!why_down_.empty())
    health_.set(fail_fast_ ? Backend::State::failing : Backend::State::reconnecting, why_down_);
}

void IscsiPathSet::report_error(Path &path) noexcept {
  const std::string &now = path.session->last_error();
  if (now == path.reported)
    return;
  try {
    path.reported = now;
  } catch (...) {
    return;
  }
  target_->path_book.set_error(path.index, now);
}

void IscsiPathSet::on_tick() noexcept {
  for (auto &p : paths_) { // a refused login never changes readiness: its reason shows here
    if (p->session && !p->ready)
      report_error(*p);
    if (p->fencing) {
      // The path that sent the PREEMPT lost that context (its answer never comes), or the
      // target sits on it: asked again.
      const IscsiSession &from = *paths_[p->fencing_from]->session;
      const bool same_context = from.connected() && from.context_generation() == p->fencing_context;
      if (!same_context) {
        p->fencing = false; // its answer never comes
      } else if (SessionClock::now() - p->fencing_since > std::chrono::seconds(setup_bound_seconds(target_->options))) {
        p->fencing = false;
        paths_[p->fencing_from]->session->cancel_preempt(); // or it would refuse the next one
      }
    }
    if (p->session && !p->unfenced.empty()) {
      expire_fenced(*p);
      if (!p->fencing)
        start_fence(*p); // no live path could send it before, or it failed
    }
  }
  if (down_ && why_down_.empty() && !cancelled_) {
    // No path has logged in yet (a queue opened while the target was away): once an attempt
    // has failed, the queue is reconnecting, and says why.
    for (auto &p : paths_)
      if (p->session && !p->session->last_error().empty()) {
        try {
          why_down_ = "no path has logged in yet; path " + std::to_string(p->index) + ": " + p->session->last_error();
        } catch (...) {
        }
        update_health();
        break;
      }
  }
  if (!down_ || fail_fast_ || cancelled_)
    return;
  const auto limit = target_->options.reconnect_timeout;
  if (std::chrono::duration_cast<std::chrono::milliseconds>(SessionClock::now() - down_since_) < limit)
    return;
  VB_LOG_ERROR("%s: no path for %s (reconnect-timeout): %zu held request(s) fail, new ones fail until a path is back",
               name_.c_str(), format_duration(limit).c_str(), waiting_.size());
  fail_fast_ = true;
  if (why_down_.empty())
    why_down_ = "no path could log in";
  update_health();
  drop_waiting(EIO);
}

void IscsiPathSet::drop_waiting(int error) noexcept {
  std::vector<Forwarded *> dropped;
  dropped.swap(waiting_);
  for (Forwarded *f : dropped)
    finish(f, error);
}

void IscsiPathSet::fence() noexcept {
  // What waits for a path never reached the target: dropped. What each path sent is its own
  // session's to fence (finished, or ECANCELED when lost, never sent again).
  drop_waiting(ECANCELED);
  for (auto &p : paths_) {
    // Waiting for a dead path's fence: never sent again either, but completed only once fenced.
    for (Forwarded *f : p->fenced_out)
      f->complete_with = ECANCELED;
    p->session->fence();
  }
}

void IscsiPathSet::abandon_fenced() noexcept {
  for (auto &p : paths_)
    p->session->abandon_fenced();
}

void IscsiPathSet::cancel_all() noexcept {
  cancelled_ = true;
  for (auto &p : paths_)
    if (p->session)
      p->session->cancel_all();
  drop_waiting(ECANCELED);
  for (auto &p : paths_) { // the queue goes: nothing may be left to complete later
    std::vector<Forwarded *> out;
    out.swap(p->fenced_out);
    for (Forwarded *f : out)
      finish(f, ECANCELED);
  }
}

} // namespace vb
