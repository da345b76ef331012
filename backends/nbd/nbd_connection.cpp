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

struct NbdConnection::Job : SessionJob {
  NbdConnection *conn = nullptr;
  std::uint64_t generation = 0; // handle the commands were issued on
  unsigned parts_left = 0;      // NBD commands still outstanding
  // A contiguous copy of a scattered read/write (one NBD command instead of one per piece).
  char *bounce = nullptr;
  unsigned bounce_class = 0;
};

namespace {

// Largest NBD command when the server states no maximum: what the protocol calls always safe.
constexpr std::uint64_t kDefaultMaxCommand = 32ULL << 20;

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

namespace {

SessionSettings nbd_session_settings(const NbdOptions &options, std::string name) {
  SessionSettings s;
  s.name = std::move(name);
  s.reconnect_timeout = options.reconnect_timeout;
  s.request_timeout = options.request_timeout;
  // The handshake gets request-timeout too (30 s without one): it carries no writes.
  s.attempt_timeout = options.request_timeout.count() > 0 ? options.request_timeout : std::chrono::milliseconds(30000);
  return s;
}

} // namespace

NbdConnection::NbdConnection(EventLoop &loop, const NbdOptions &options, const BackendCapabilities &caps,
                             NbdExportSize &size, nbd_handle *handle, std::string name)
    : loop_(loop), options_(options), caps_(caps), size_(size), shutdown_(loop, [this] { on_server_shutdown(); }),
      flush_(loop, [this] { flush_transport(); }), reaper_(loop, [this] { retired_transport_.reset(); }),
      core_(loop, size.sessions, *this, nbd_session_settings(options, std::move(name))) {
  if (handle) {
    h_ = handle;
    ++generation_;
    handle_size_ = static_cast<std::uint64_t>(std::max<std::int64_t>(nbd_get_size(h_), 0));
    watch_ = std::make_unique<IoWatch>(loop_, nbd_aio_get_fd(h_), [this](short ev) { on_io(ev); });
    start_transport();
    core_.start(true);
    update_events();
  } else {
    core_.start(false);
  }
}

NbdConnection::~NbdConnection() { core_.cancel_all(); }

int NbdConnection::submit(const Request &req, CompletionFn done, void *ctx, const void *source) noexcept {
  const std::uint64_t size = size_.get();
  if (req.offset > size || req.length > size - req.offset)
    return EIO;
  if (const int rc = core_.admit(); rc != 0)
    return rc;
  Job *op = jobs_.take();
  if (!op)
    return ENOMEM;
  op->conn = this;
  op->req = req;
  op->done = done;
  op->ctx = ctx;
  op->source = source;
  // The export grew past what this handle negotiated: replace it once what is in flight is done.
  if (core_.ready() && req.offset + req.length > handle_size_) {
    VB_LOG_INFO("%s: the export grew past the size this connection negotiated", core_.name().c_str());
    core_.drain();
  }
  if (const int rc = core_.submit(op); rc != 0) {
    jobs_.give(op);
    return rc;
  }
  update_events();
  return 0;
}

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
    if (transport_) {
      using nbd_wire::Command;
      static constexpr Command kCommand[] = {Command::read, Command::write, Command::flush, Command::trim,
                                             Command::write_zeroes};
      static_assert(static_cast<int>(Op::read) == 0 && static_cast<int>(Op::write) == 1 &&
                    static_cast<int>(Op::flush) == 2 && static_cast<int>(Op::discard) == 3 &&
                    static_cast<int>(Op::write_zeroes) == 4);
      const Command type = kCommand[static_cast<int>(r.op)];
      const bool data = type == Command::read || type == Command::write;
      const std::uint16_t flags = type == Command::write_zeroes && !r.may_unmap ? nbd_wire::kFlagNoHole : 0;
      // flush carries no range (issue_range counts it as one byte).
      const auto len = static_cast<std::uint32_t>(type == Command::flush ? 0 : n);
      if (!queued(op, transport_->issue(type, flags, type == Command::flush ? 0 : offset + done, len,
                                        data ? buf + done : nullptr, op)))
        return false;
      done += n;
      continue;
    }
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
      VB_LOG_WARN("%s: %s", core_.name().c_str(), nbd_get_error());
      return false;
    }
    done += n;
  }
  return true;
}

// After one command of op was given to the own transmission path (ok: it took it; the caller
// counted it in parts_left already): it goes out with the rest of this pass, or op fails ENOMEM.
bool NbdConnection::queued(Job *op, bool ok) noexcept {
  if (!ok) {
    --op->parts_left;
    if (op->error == 0)
      op->error = ENOMEM;
    return false;
  }
  flush_.schedule();
  return true;
}

// Sends op as one or more NBD commands on the current handle: one per contiguous piece of memory
// (zero copy, no allocation) or one from a bounce copy, each no larger than the server's maximum.
void NbdConnection::send(SessionJob *job) noexcept {
  auto *op = static_cast<Job *>(job);
  op->generation = generation_;
  op->parts_left = 1; // guard: the op cannot finish while parts are still being issued
  const Request &r = op->req;
  const std::uint64_t max_cmd = caps_.max_transfer ? caps_.max_transfer : kDefaultMaxCommand;

  switch (r.op) {
  case Op::read:
  case Op::write: {
    if (transport_ && !op->bounce && r.iovcnt > 1 && r.length <= max_cmd) {
      // One command received into, or sent from, the pieces themselves: no copy at all.
      ++op->parts_left;
      queued(op, transport_->issue(r.op == Op::read ? nbd_wire::Command::read : nbd_wire::Command::write, r.offset,
                                   static_cast<std::uint32_t>(r.length), r.iov, r.iovcnt, op));
      break;
    }
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
  if (!transport_ && (nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_))) {
    // The connection died under us: the op is still in flight, so it is resubmitted after
    // reconnecting, whatever part of it was issued.
    op->error = 0;
    core_.lost("the connection failed while sending");
    return;
  }
  if (--op->parts_left == 0)
    core_.retire(op);
}

void NbdConnection::requeue(SessionJob *job) noexcept {
  // Resent whole: parts answered on the old handle count for nothing (NBD commands are idempotent
  // when no later write to the same blocks was sent, which SessionCore's fencing guarantees).
  job->error = 0;
}

// The driver reset: the job's commands still queued for the socket never reach the server (on
// libnbd's path there is no such queue to take them from: its commands are written at once).
std::size_t NbdConnection::fence_job(SessionJob *job) noexcept {
  if (!transport_)
    return 0;
  auto *op = static_cast<Job *>(job);
  const std::size_t dropped = transport_->drop_unsent(op);
  if (dropped == 0)
    return 0;
  if (op->error == 0)
    op->error = ECANCELED;
  op->parts_left -= static_cast<unsigned>(dropped);
  if (op->parts_left == 0)
    core_.retire(op);
  return dropped;
}

// The own transport knows what is fully written; with libnbd carrying the commands that is not
// known, so every job counts as touching its buffers.
bool NbdConnection::touches_buffers(const SessionJob &job) const noexcept {
  return !transport_ || transport_->touches_buffers(static_cast<const Job *>(&job)); // the ctx queue() was given
}

int NbdConnection::on_command_done(void *user_data, int *error) noexcept {
  auto *op = static_cast<Job *>(user_data);
  NbdConnection *self = op->conn;
  // Commands of a handle being torn down are resubmitted on the next one, not completed.
  if (self->closing_ || op->generation != self->generation_)
    return 1;
  // When the connection dies libnbd retires every command in flight with ENOTCONN (no server
  // sends that); ESHUTDOWN is a server going down. Neither is an answer about the data: leave the
  // job in flight, the loss of the connection requeues it.
  if (*error == ENOTCONN || (self->h_ && (nbd_aio_is_dead(self->h_) || nbd_aio_is_closed(self->h_))))
    return 1;
  if (*error == ESHUTDOWN) {
    // The server is going away but the socket is still open: nothing else would ever retire
    // the command. The connection is replaced (not from inside libnbd's callback) and the job,
    // still in flight, is resubmitted on the next one.
    self->shutdown_.schedule();
    return 1;
  }
  self->command_done(op, *error);
  return 1;
}

void NbdConnection::command_done(Job *op, int error) noexcept {
  if (error != 0) {
    op->answered_error = true; // the server's answer: not sent again if the connection goes
    if (op->error == 0)
      op->error = error;
  }
  if (--op->parts_left == 0)
    core_.retire(op);
}

void NbdConnection::on_transport_done(void *ctx, int error) noexcept {
  auto *op = static_cast<Job *>(ctx);
  NbdConnection *self = op->conn;
  if (error == ESHUTDOWN) {
    // As on libnbd's path: the job stays in flight for the next connection.
    self->server_shutting_down_ = true;
    self->shutdown_.schedule();
    return;
  }
  self->command_done(op, error);
}

// Plaintext, simple replies, nothing in flight on libnbd's side: the own path takes over the
// socket (libnbd keeps it, and closes it at nbd_close()).
void NbdConnection::start_transport() noexcept {
  if (!options_.direct_transmission || !h_ || nbd_get_tls_negotiated(h_) == 1 ||
      nbd_get_structured_replies_negotiated(h_) != 0 || nbd_aio_in_flight(h_) != 0 || nbd_aio_is_ready(h_) != 1)
    return;
#ifdef LIBNBD_HAVE_NBD_GET_EXTENDED_HEADERS_NEGOTIATED
  if (nbd_get_extended_headers_negotiated(h_) != 0)
    return;
#endif
  server_shutting_down_ = false;
  try {
    transport_ = std::make_unique<NbdTransport>(nbd_aio_get_fd(h_), &NbdConnection::on_transport_done);
  } catch (const std::bad_alloc &) {
    return; // libnbd's path then
  }
  size_.direct_connections.fetch_add(1, std::memory_order_relaxed);
  if (watch_)
    watch_->set_events(EV_READ); // on_io() hands the events to on_transport_io() from now on
}

void NbdConnection::flush_transport() noexcept {
  if (!transport_)
    return;
  std::string why;
  if (!transport_->flush(why)) {
    core_.lost(why);
    return;
  }
  if (watch_)
    watch_->set_events(static_cast<short>(EV_READ | (transport_->want_write() ? EV_WRITE : 0)));
}

void NbdConnection::on_transport_io(short events) noexcept {
  NbdTransport *t = transport_.get();
  std::string why;
  if ((events & EV_READ) && !t->receive(why)) {
    if (transport_.get() != t)
      return;
    if (server_shutting_down_)
      on_server_shutdown(); // a failed read said ESHUTDOWN: reconnect after the pause, as for any ESHUTDOWN
    else
      core_.lost(why);
    return;
  }
  if (transport_.get() != t)
    return; // dropped by a completion (the connection is being replaced)
  flush_transport();
}

void NbdConnection::release(SessionJob *job, int error) noexcept {
  auto *op = static_cast<Job *>(job);
  if (op->bounce) {
    if (error == 0 && op->req.op == Op::read)
      copy_between(op->req, op->bounce, false);
    give_bounce(op);
  }
  jobs_.give(op);
}

void NbdConnection::update_events() noexcept {
  if (!h_ || !watch_ || transport_)
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
  if (transport_) {
    on_transport_io(events);
    return;
  }
  int rc = 0;
  if ((events & EV_READ) && rc != -1)
    rc = nbd_aio_notify_read(h_);
  if ((events & EV_WRITE) && rc != -1 && h_)
    rc = nbd_aio_notify_write(h_);
  if (!h_)
    return;
  if (rc == -1 || nbd_aio_is_dead(h_) || nbd_aio_is_closed(h_)) {
    const char *err = nbd_get_error();
    if (core_.state() == SessionCore::State::connecting)
      core_.attempt_failed(std::string("cannot connect: ") + (err ? err : "connection closed"));
    else
      core_.lost(err ? err : "connection closed");
    return;
  }
  if (core_.state() == SessionCore::State::connecting && nbd_aio_is_ready(h_)) {
    on_connected();
    return;
  }
  update_events();
}

void NbdConnection::connect() noexcept {
  try {
    h_ = make_nbd_handle(options_);
  } catch (const std::exception &e) {
    core_.attempt_failed(e.what(), true); // the setup itself failed: retry slowly
    return;
  }
  ++generation_;
  if (nbd_aio_connect_uri(h_, options_.uri.c_str()) == -1) {
    core_.attempt_failed(std::string("cannot connect: ") + nbd_get_error());
    return;
  }
  try {
    watch_ = std::make_unique<IoWatch>(loop_, nbd_aio_get_fd(h_), [this](short ev) { on_io(ev); });
  } catch (const std::exception &e) {
    core_.attempt_failed(std::string("cannot watch the socket: ") + e.what());
    return;
  }
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
    core_.attempt_failed("the server came back as a different export: " + mismatch + "; refusing it", true);
    return;
  }
  size_.observe(static_cast<std::uint64_t>(size));
  handle_size_ = static_cast<std::uint64_t>(size);
  start_transport();
  core_.connected();
  if (!transport_)
    update_events();
}

void NbdConnection::on_server_shutdown() noexcept {
  if (core_.state() != SessionCore::State::ready && core_.state() != SessionCore::State::draining)
    return;
  // Not at once: a server going down would answer the next handshake the same way.
  core_.lost("the server is shutting down (ESHUTDOWN)", std::chrono::milliseconds(500));
}

void NbdConnection::disconnect() noexcept {
  watch_.reset();
  flush_.cancel();
  if (transport_) {
    transport_->abandon(); // no callback from it any more; freed once its receive() returned
    size_.direct_connections.fetch_sub(1, std::memory_order_relaxed);
    retired_transport_ = std::move(transport_);
    reaper_.schedule();
  }
  if (h_) {
    closing_ = true;
    nbd_close(h_); // may run completion callbacks; they see closing_ and do nothing
    closing_ = false;
    h_ = nullptr;
  }
}

} // namespace vb
