#include "nbd/nbd_connection.h"

#include "common/log.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <event2/event.h>
#include <libnbd.h>
#include <pwd.h>
#include <stdexcept>
#include <unistd.h>

namespace vb {

struct NbdConnection::Job {
  NbdConnection *conn = nullptr;
  Request req;
  CompletionFn done = nullptr;
  void *ctx = nullptr;
  const void *source = nullptr; // the submitting queue
  bool fenced = false;          // the driver reset since: finish, never send again
  std::uint64_t seq = 0;        // submission order, for resubmission oldest first
  std::uint64_t generation = 0; // handle the commands were issued on
  unsigned parts_left = 0;      // NBD commands still outstanding
  int error = 0;                // first error of any part
  std::size_t index = 0;        // position in in_flight_
  std::chrono::steady_clock::time_point issued{};
  std::chrono::steady_clock::time_point submitted{};
  // A contiguous copy of a scattered read/write (one NBD command instead of one per piece).
  char *bounce = nullptr;
  unsigned bounce_class = 0;
};

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kMaxBackoff = std::chrono::milliseconds(5000);
// Largest NBD command when the server states no maximum: what the protocol calls always safe.
constexpr std::uint64_t kDefaultMaxCommand = 32ULL << 20;

void remove_from(std::vector<NbdConnection::Job *> &v, NbdConnection::Job *op);

// Scattered requests with more pieces than this are copied into one buffer: a round trip per
// 4 KiB page costs far more than a memcpy (128 KiB sequential I/O was 4x slower without it).
constexpr unsigned kMaxPiecesWithoutCopy = 2;
constexpr unsigned kMinBounceShift = 16; // 64 KiB
constexpr unsigned kMaxBounceShift = 25; // 32 MiB; larger requests are sent piece by piece
constexpr std::size_t kBouncesKeptPerClass = 64;
// Bounce memory of one connection, in use and pooled together: the guest decides how many large
// scattered requests are in flight, this decides what they may cost. Past it a request is sent
// piece by piece from its own buffers (slower, no memory).
constexpr std::size_t kBounceBudget = 64ULL << 20;

unsigned count_pieces(const Request &r) {
  unsigned pieces = 0;
  for (int i = 0; i < r.iovcnt; ++i)
    if (i == 0 || static_cast<const char *>(r.iov[i - 1].iov_base) + r.iov[i - 1].iov_len != r.iov[i].iov_base)
      ++pieces;
  return pieces;
}

// Copies a request's scattered data into buf (to_buffer) or back out of it.
void copy_between(const Request &r, char *buf, bool to_buffer) noexcept {
  std::uint64_t pos = 0;
  for (int i = 0; i < r.iovcnt && pos < r.length; ++i) {
    const std::uint64_t n = std::min<std::uint64_t>(r.iov[i].iov_len, r.length - pos);
    if (to_buffer)
      std::memcpy(buf + pos, r.iov[i].iov_base, n);
    else
      std::memcpy(r.iov[i].iov_base, buf + pos, n);
    pos += n;
  }
}

} // namespace

char *NbdConnection::take_bounce(std::uint64_t length, unsigned &size_class) noexcept {
  unsigned shift = kMinBounceShift;
  while (shift <= kMaxBounceShift && (1ULL << shift) < length)
    ++shift;
  if (shift > kMaxBounceShift)
    return nullptr;
  size_class = shift - kMinBounceShift;
  auto &pool = bounce_pool_[size_class];
  if (!pool.empty()) {
    char *b = pool.back().release();
    pool.pop_back();
    return b;
  }
  const std::size_t bytes = std::size_t{1} << shift;
  // Over budget: pooled buffers of other sizes go first; if that is not enough, no bounce.
  for (unsigned c = 0; c < std::size(bounce_pool_) && bounce_bytes_ + bytes > kBounceBudget; ++c)
    while (!bounce_pool_[c].empty() && bounce_bytes_ + bytes > kBounceBudget) {
      bounce_pool_[c].pop_back();
      bounce_bytes_ -= std::size_t{1} << (c + kMinBounceShift);
    }
  if (bounce_bytes_ + bytes > kBounceBudget)
    return nullptr;
  char *b = new (std::nothrow) char[bytes]; // warm-up only: buffers are recycled
  if (b)
    bounce_bytes_ += bytes;
  return b;
}

void NbdConnection::give_bounce(Job *job) noexcept {
  if (!job->bounce)
    return;
  auto &pool = bounce_pool_[job->bounce_class];
  if (pool.size() < kBouncesKeptPerClass) {
    pool.emplace_back(job->bounce);
  } else {
    delete[] job->bounce;
    bounce_bytes_ -= std::size_t{1} << (job->bounce_class + kMinBounceShift);
  }
  job->bounce = nullptr;
}

nbd_handle *make_nbd_handle(const NbdOptions &options) {
  nbd_handle *h = nbd_create();
  if (!h)
    throw std::runtime_error(std::string("nbd_create: ") + nbd_get_error());
  auto fail = [h](const char *what) {
    std::string msg = std::string(what) + ": " + nbd_get_error();
    nbd_close(h);
    throw std::runtime_error(msg);
  };
  // Block size constraints decide the disk's logical block size and the command size limit.
  if (nbd_set_request_block_size(h, true) == -1)
    fail("nbd_set_request_block_size");
  // libnbd zeroes every read buffer before the read by default (a memset of the whole request
  // per read); the buffers are the driver's own memory, and a failed read completes with IOERR,
  // so nothing is gained by it.
  if (nbd_set_pread_initialize(h, false) == -1)
    fail("nbd_set_pread_initialize");
  // NBD_INFO_NAME and NBD_INFO_DESCRIPTION: part of what identifies the export across reconnects.
  if (nbd_set_full_info(h, true) == -1)
    fail("nbd_set_full_info");
  if (nbd_set_request_structured_replies(h, options.structured_replies) == -1)
    fail("nbd_set_request_structured_replies");
  if (!options.tls_certificates.empty() && nbd_set_tls_certificates(h, options.tls_certificates.c_str()) == -1)
    fail("tls-certificates");
  if (!options.tls_psk_file.empty() && nbd_set_tls_psk_file(h, options.tls_psk_file.c_str()) == -1)
    fail("tls-psk-file");
  // libnbd's default PSK identity is the login name, which a daemon without a terminal does not
  // have (getlogin fails); use the effective user's name. A user in the URI (nbds://alice@host/) wins.
  passwd pwd{};
  passwd *pw = nullptr;
  char buf[1024];
  if (::getpwuid_r(::geteuid(), &pwd, buf, sizeof buf, &pw) == 0 && pw && nbd_set_tls_username(h, pw->pw_name) == -1)
    fail("nbd_set_tls_username");
  return h;
}

void NbdExportSize::observe(std::uint64_t server_size) noexcept {
  const std::uint64_t size = server_size / block_ * block_;
  if (size_.exchange(size, std::memory_order_relaxed) != size && on_change_)
    on_change_(size);
}

std::string export_identity(const std::string &uri, nbd_handle *h) {
  std::string id = "nbd:" + uri + " (";
  if (char *name = nbd_get_canonical_export_name(h)) {
    id += name;
    std::free(name);
  }
  id += '|';
  if (char *description = nbd_get_export_description(h)) {
    id += description;
    std::free(description);
  }
  return id + ')';
}

std::string export_mismatch(nbd_handle *h, const BackendCapabilities &caps, const std::string &uri) {
  if (nbd_is_read_only(h) == 1 && !caps.read_only)
    return "it is read-only now";
  const struct {
    bool had;
    int (*now)(nbd_handle *);
    const char *what;
  } flags[] = {{caps.can_flush, nbd_can_flush, "flush"},
               {caps.can_discard, nbd_can_trim, "trim"},
               {caps.can_write_zeroes, nbd_can_zero, "write zeroes"}};
  for (const auto &f : flags)
    if (f.had && f.now(h) != 1)
      return std::string("it no longer supports ") + f.what;
  const std::int64_t minimum = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  if (minimum > static_cast<std::int64_t>(caps.logical_block_size))
    return "it now requires " + std::to_string(minimum) + "-byte blocks";
  const std::string id = export_identity(uri, h);
  if (id != caps.identity)
    return "it is now " + id + ", was " + caps.identity;
  return {};
}

NbdConnection::NbdConnection(EventLoop &loop, const NbdOptions &options, const BackendCapabilities &caps,
                             NbdExportSize &size, nbd_handle *handle, std::string name)
    : loop_(loop), options_(options), caps_(caps), size_(size), name_(std::move(name)),
      reconnect_timer_(loop, [this] { start_connect(); }), shutdown_(loop, [this] { on_server_shutdown(); }),
      tick_(loop, [this] { on_tick(); }) {
  tick_.arm_periodic(std::chrono::milliseconds(250));
  if (handle) {
    h_ = handle;
    ++generation_;
    state_ = State::ready;
    handle_size_ = static_cast<std::uint64_t>(std::max<std::int64_t>(nbd_get_size(h_), 0));
    watch_ = std::make_unique<IoWatch>(loop_, nbd_aio_get_fd(h_), [this](short ev) { on_io(ev); });
    update_events();
  } else {
    down_since_ = Clock::now();
    start_connect();
  }
}

NbdConnection::~NbdConnection() {
  cancel_all();
  close_handle();
  set_health(Backend::State::connected); // this connection no longer counts as down
}

NbdConnection::Job *NbdConnection::new_job() noexcept {
  if (free_ops_.empty()) {
    jobs_.push_back(std::make_unique<Job>());
    jobs_.back()->conn = this;
    return jobs_.back().get();
  }
  Job *op = free_ops_.back();
  free_ops_.pop_back();
  return op;
}

int NbdConnection::submit(const Request &req, CompletionFn done, void *ctx, const void *source) noexcept {
  const std::uint64_t size = size_.get();
  if (req.offset > size || req.length > size - req.offset)
    return EIO;
  if (state_ != State::ready && fail_fast_)
    return EIO; // the server has been gone for longer than reconnect-timeout
  Job *op = new_job();
  op->req = req;
  op->done = done;
  op->ctx = ctx;
  op->source = source;
  op->fenced = false;
  op->seq = ++seq_;
  op->error = 0;
  op->submitted = Clock::now();
  if (state_ == State::ready && req.offset + req.length > handle_size_)
    start_refresh();
  if (state_ == State::ready) {
    issue(op);
    update_events();
  } else {
    held_.push_back(op);
  }
  return 0;
}

// Issues op as one or more NBD commands on the current handle: one per contiguous piece of
// memory (zero copy, no allocation), each no larger than the server's maximum.
// Issues [offset, offset + length) of op as commands of at most max bytes; buf is the data for
// reads and writes. Returns false after the first command that could not be issued.
bool NbdConnection::issue_range(Job *op, char *buf, std::uint64_t offset, std::uint64_t length,
                                std::uint64_t max) noexcept {
  const nbd_completion_callback cb{&NbdConnection::on_command_done, op, nullptr};
  const Request &r = op->req;
  for (std::uint64_t done = 0; done < length;) {
    const std::uint64_t n = std::min(length - done, max);
    std::int64_t cookie = -1;
    ++op->parts_left;
    switch (r.op) {
    case Op::read:
      cookie = nbd_aio_pread(h_, buf + done, n, offset + done, cb, 0);
      break;
    case Op::write:
      cookie = nbd_aio_pwrite(h_, buf + done, n, offset + done, cb, 0);
      break;
    case Op::flush:
      cookie = nbd_aio_flush(h_, cb, 0);
      break;
    case Op::discard:
      cookie = nbd_aio_trim(h_, n, offset + done, cb, 0);
      break;
    case Op::write_zeroes:
      cookie = nbd_aio_zero(h_, n, offset + done, cb, r.may_unmap ? 0 : LIBNBD_CMD_FLAG_NO_HOLE);
      break;
    }
    if (cookie == -1) {
      --op->parts_left;
      if (op->error == 0)
        op->error = nbd_get_errno() ? nbd_get_errno() : EIO;
      VB_LOG_WARN("%s: %s", name_.c_str(), nbd_get_error());
      return false;
    }
    done += n;
  }
  return true;
}

void NbdConnection::issue(Job *op) noexcept {
  op->generation = generation_;
  op->issued = Clock::now();
  op->parts_left = 1; // guard: the op cannot finish while parts are still being issued
  op->index = in_flight_.size();
  in_flight_.push_back(op);
  const Request &r = op->req;
  const std::uint64_t max_cmd = caps_.max_transfer ? caps_.max_transfer : kDefaultMaxCommand;

  switch (r.op) {
  case Op::read:
  case Op::write: {
    if (!op->bounce && r.iovcnt > 1 && count_pieces(r) > kMaxPiecesWithoutCopy) {
      op->bounce = take_bounce(r.length, op->bounce_class);
      if (op->bounce && r.op == Op::write)
        copy_between(r, op->bounce, true);
    }
    if (op->bounce) {
      issue_range(op, op->bounce, r.offset, r.length, max_cmd);
      break;
    }
    // Zero copy: one command (or more, at the server's maximum) per contiguous piece of memory.
    std::uint64_t offset = r.offset;
    std::uint64_t left = r.length;
    for (int i = 0; i < r.iovcnt && left > 0; ++i) {
      auto *base = static_cast<char *>(r.iov[i].iov_base);
      std::uint64_t len = std::min<std::uint64_t>(r.iov[i].iov_len, left);
      // Merge with following iovecs that continue this one in memory.
      while (i + 1 < r.iovcnt && base + len == r.iov[i + 1].iov_base && len < left) {
        len = std::min<std::uint64_t>(len + r.iov[i + 1].iov_len, left);
        ++i;
      }
      if (!issue_range(op, base, offset, len, max_cmd))
        break;
      offset += len;
      left -= len;
    }
    break;
  }
  case Op::flush:
    issue_range(op, nullptr, 0, 1, 1); // one command; the range only counts it
    break;
  case Op::discard:
  case Op::write_zeroes:
    // Large ranges split at the server's limit (NBD lengths are 32-bit).
    issue_range(op, nullptr, r.offset, r.length, caps_.max_discard ? caps_.max_discard : (1ULL << 31));
    break;
  }
  if (nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_)) {
    // The connection died under us: the op is still in flight, so it is resubmitted after
    // reconnecting, whatever part of it was issued.
    op->error = 0;
    connection_lost("the connection failed while sending");
    return;
  }
  if (--op->parts_left == 0)
    retire(op);
}

// The last command of op is done: it leaves the in-flight set and completes.
void NbdConnection::retire(Job *op) noexcept {
  remove_from(in_flight_, op);
  finish(op, op->error);
  if (state_ == State::refreshing && in_flight_.empty())
    reconnect_timer_.arm(std::chrono::milliseconds(0));
}

void NbdConnection::start_refresh() noexcept {
  VB_LOG_INFO("%s: the export grew past the size this connection negotiated; reconnecting once %zu request(s) in "
              "flight are done",
              name_.c_str(), in_flight_.size());
  state_ = State::refreshing;
  down_since_ = Clock::now();
  if (in_flight_.empty())
    reconnect_timer_.arm(std::chrono::milliseconds(0));
}

int NbdConnection::on_command_done(void *user_data, int *error) noexcept {
  auto *op = static_cast<Job *>(user_data);
  NbdConnection *self = op->conn;
  // Commands of a handle being torn down are resubmitted on the next one, not completed.
  if (self->closing_ || op->generation != self->generation_)
    return 1;
  // When the connection dies libnbd retires every command in flight with ENOTCONN (no server
  // sends that); ESHUTDOWN is a server going down. Neither is an answer about the data: leave the
  // job in flight, connection_lost() requeues it.
  if (*error == ENOTCONN || (self->h_ && (nbd_aio_is_dead(self->h_) || nbd_aio_is_closed(self->h_))))
    return 1;
  if (*error == ESHUTDOWN) {
    // The server is going away but the socket is still open: nothing else would ever retire
    // the command. The connection is replaced (not from inside libnbd's callback) and the job,
    // still in flight, is resubmitted on the next one.
    self->shutdown_.schedule();
    return 1;
  }
  if (*error != 0 && op->error == 0)
    op->error = *error;
  if (--op->parts_left == 0)
    self->retire(op);
  return 1;
}

void NbdConnection::finish(Job *op, int error) noexcept {
  if (op->bounce) {
    if (error == 0 && op->req.op == Op::read)
      copy_between(op->req, op->bounce, false);
    give_bounce(op);
  }
  const CompletionFn done = op->done;
  void *ctx = op->ctx;
  op->done = nullptr;
  free_ops_.push_back(op);
  done(ctx, error);
}

void NbdConnection::update_events() noexcept {
  if (!h_ || !watch_)
    return;
  const unsigned dir = nbd_aio_get_direction(h_);
  short ev = 0;
  if (dir & LIBNBD_AIO_DIRECTION_READ)
    ev |= EV_READ;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    ev |= EV_WRITE;
  watch_->set_events(ev);
}

void NbdConnection::on_io(short events) noexcept {
  int rc = 0;
  if ((events & EV_READ) && rc != -1)
    rc = nbd_aio_notify_read(h_);
  if ((events & EV_WRITE) && rc != -1 && h_)
    rc = nbd_aio_notify_write(h_);
  if (!h_)
    return;
  if (rc == -1 || nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_)) {
    if (state_ == State::connecting) {
      retry_connect_later("connect failed");
      return;
    }
    connection_lost(nbd_get_error() ? nbd_get_error() : "connection closed");
    return;
  }
  if (state_ == State::connecting && nbd_aio_is_ready(h_)) {
    on_connected();
    return;
  }
  update_events();
}

// Gives up on the current attempt and tries again after the backoff, which doubles up to 5 s.
void NbdConnection::retry_connect_later(const char *what) noexcept {
  const char *err = nbd_get_error();
  VB_LOG_DEBUG("%s: %s: %s", name_.c_str(), what, err ? err : "");
  close_handle();
  state_ = State::down;
  reconnect_timer_.arm(backoff_);
  backoff_ = std::min(backoff_ * 2, std::chrono::duration_cast<std::chrono::milliseconds>(kMaxBackoff));
}

void NbdConnection::start_connect() noexcept {
  close_handle();
  state_ = State::connecting;
  connect_started_ = Clock::now();
  try {
    h_ = make_nbd_handle(options_);
  } catch (const std::exception &e) {
    VB_LOG_ERROR("%s: %s", name_.c_str(), e.what());
    state_ = State::down;
    reconnect_timer_.arm(kMaxBackoff);
    return;
  }
  ++generation_;
  if (nbd_aio_connect_uri(h_, options_.uri.c_str()) == -1) {
    retry_connect_later("connect");
    return;
  }
  watch_ = std::make_unique<IoWatch>(loop_, nbd_aio_get_fd(h_), [this](short ev) { on_io(ev); });
  if (nbd_aio_is_ready(h_)) {
    on_connected();
    return;
  }
  update_events();
}

void NbdConnection::on_connected() noexcept {
  // The server must be the same export it was: serving another disk's data under this one's
  // name would corrupt whatever uses it. Only the size may change (a resize).
  const std::int64_t size = nbd_get_size(h_);
  std::string mismatch = size <= 0 ? std::string("its size is unknown or 0") : export_mismatch(h_, caps_, options_.uri);
  if (!mismatch.empty()) {
    VB_LOG_ERROR("%s: the server came back as a different export (%s); refusing it and retrying", name_.c_str(),
                 mismatch.c_str());
    set_health(fail_fast_ ? Backend::State::failing : Backend::State::reconnecting,
               "the server came back as a different export: " + mismatch);
    close_handle();
    state_ = State::down;
    reconnect_timer_.arm(kMaxBackoff);
    return;
  }
  size_.observe(static_cast<std::uint64_t>(size));
  set_health(Backend::State::connected);
  handle_size_ = static_cast<std::uint64_t>(size);
  state_ = State::ready;
  backoff_ = std::chrono::milliseconds(100);
  if (reconnects_ > 0 || !held_.empty() || fail_fast_) {
    const double down_s = std::chrono::duration<double>(Clock::now() - down_since_).count();
    VB_LOG_INFO("%s: reconnected after %.1fs; resubmitting %zu request(s)", name_.c_str(), down_s, held_.size());
  }
  fail_fast_ = false;
  issue_held();
  update_events();
}

void NbdConnection::issue_held() noexcept {
  // Oldest first, as they were submitted.
  std::vector<Job *> held;
  held.swap(held_);
  std::sort(held.begin(), held.end(), [](const Job *a, const Job *b) { return a->seq < b->seq; });
  for (Job *op : held) {
    if (state_ != State::ready) {
      held_.push_back(op);
      continue;
    }
    issue(op);
  }
}

void NbdConnection::on_server_shutdown() noexcept {
  if (state_ != State::ready && state_ != State::refreshing)
    return;
  connection_lost("the server is shutting down (ESHUTDOWN)");
  // Not at once: a server going down would answer the next handshake the same way.
  reconnect_timer_.arm(std::chrono::milliseconds(500));
}

void NbdConnection::connection_lost(const char *why) noexcept {
  VB_LOG_WARN(
      "%s: connection lost (%s); %zu request(s) in flight will be resubmitted, new I/O is held for up to "
      "%llds",
      name_.c_str(), why, in_flight_.size(),
      static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(options_.reconnect_timeout).count()));
  set_health(Backend::State::reconnecting, std::string("connection lost: ") + why);
  close_handle();
  std::vector<Job *> lost;
  lost.swap(in_flight_);
  for (Job *op : lost) {
    if (op->fenced)
      finish(op, ECANCELED); // from before a reset: may have reached the server, never sent again
    else
      held_.push_back(op);
  }
  state_ = State::down;
  down_since_ = Clock::now();
  ++reconnects_;
  backoff_ = std::chrono::milliseconds(100);
  // From the loop, not from here: this may run inside issue_held()'s loop.
  reconnect_timer_.arm(std::chrono::milliseconds(0));
}

void NbdConnection::close_handle() noexcept {
  watch_.reset();
  if (h_) {
    closing_ = true;
    nbd_close(h_); // may run completion callbacks; they see closing_ and do nothing
    closing_ = false;
    h_ = nullptr;
  }
}

void NbdConnection::on_tick() noexcept {
  const auto now = Clock::now();
  if ((state_ == State::ready || state_ == State::refreshing) && options_.request_timeout.count() > 0) {
    for (const Job *op : in_flight_) {
      if (now - op->issued > options_.request_timeout) {
        connection_lost("a request got no reply within request-timeout");
        return;
      }
    }
  }
  // A server that accepts connections but never finishes the handshake (stopped, wedged) must
  // not hold the connection in "connecting" for ever: the handshake gets request-timeout too.
  // (A handshake carries no writes, so giving up on it is always safe: 30 s without a timeout.)
  const auto handshake_timeout =
      options_.request_timeout.count() > 0 ? options_.request_timeout : std::chrono::milliseconds(30000);
  if (state_ == State::connecting && now - connect_started_ > handshake_timeout) {
    retry_connect_later("the server did not complete the handshake in time");
    return;
  }
  // A refresh (the export grew) is not an outage: it waits for in-flight requests, not the server.
  if (state_ != State::ready && state_ != State::refreshing && !fail_fast_ &&
      now - down_since_ >= options_.reconnect_timeout) {
    fail_fast_ = true;
    set_health(Backend::State::failing, "unreachable for longer than reconnect-timeout");
    VB_LOG_ERROR(
        "%s: the server has been unreachable for %llds (reconnect-timeout): failing %zu held request(s) "
        "and new I/O with EIO until it is back",
        name_.c_str(),
        static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(options_.reconnect_timeout).count()),
        held_.size());
    std::vector<Job *> held;
    held.swap(held_);
    for (Job *op : held)
      finish(op, EIO);
  }
}

void NbdConnection::cancel_all() noexcept {
  // Close first: replies that arrive during the close must not complete these jobs again.
  close_handle();
  state_ = State::down;
  std::vector<Job *> all;
  all.swap(held_);
  all.insert(all.end(), in_flight_.begin(), in_flight_.end());
  in_flight_.clear();
  for (Job *op : all)
    finish(op, ECANCELED);
}

void NbdConnection::cancel(const void *source) noexcept {
  fence(source);
  // Commands of that queue on the wire would still read into its buffers: closing the handle
  // retires them (fenced: completed with ECANCELED); the other queues' are resubmitted.
  if (std::any_of(in_flight_.begin(), in_flight_.end(), [source](const Job *op) { return op->source == source; }))
    connection_lost("a queue sharing this connection closed");
}

void NbdConnection::fence(const void *source) noexcept {
  std::vector<Job *> unsent;
  for (std::size_t i = 0; i < held_.size();) {
    if (held_[i]->source == source) {
      unsent.push_back(held_[i]);
      held_[i] = held_.back();
      held_.pop_back();
    } else {
      ++i;
    }
  }
  for (Job *op : in_flight_)
    if (op->source == source)
      op->fenced = true;
  if (!unsent.empty())
    VB_LOG_INFO("%s: the driver reset the device: %zu request(s) held for the server are dropped", name_.c_str(),
                unsent.size());
  for (Job *op : unsent)
    finish(op, ECANCELED);
}

namespace {

void remove_from(std::vector<NbdConnection::Job *> &v, NbdConnection::Job *op) {
  const std::size_t i = op->index;
  if (i < v.size() && v[i] == op) {
    v[i] = v.back();
    v[i]->index = i;
    v.pop_back();
  }
}

} // namespace

} // namespace vb
