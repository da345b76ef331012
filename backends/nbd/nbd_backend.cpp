#include "nbd/nbd_backend.h"

#include "common/log.h"
#include "common/secret_file.h"
#include "common/units.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <functional>
#include <future>
#include <libnbd.h>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_set>

namespace vb {
namespace {

// A connection owned by this queue's loop.
class OwnedQueue final : public BackendQueue {
public:
  explicit OwnedQueue(std::unique_ptr<NbdConnection> conn) : conn_(std::move(conn)) {}
  int submit(const Request &req, CompletionFn done, void *ctx) noexcept override {
    return conn_->submit(req, done, ctx, this);
  }
  void cancel_all() noexcept override { conn_->cancel(this); }
  void fence() noexcept override { conn_->fence(this); }
  void abandon_fenced() noexcept override { conn_->abandon_fenced(this); }

private:
  std::unique_ptr<NbdConnection> conn_;
};

// A queue without a connection of its own: requests cross to the owner's loop and their
// completions come back. Costs two wake-ups per request; only used when the server does not
// allow more connections (no multi-conn) or fewer connections than queues are configured.
// Requests are tagged with this queue, so a fence or a cancel affects its requests only.
class ForwardingQueue final : public BackendQueue {
public:
  ForwardingQueue(EventLoop &origin, NbdConnection &target)
      : origin_(origin), target_(target), live_(std::make_shared<Live>()) {}
  int submit(const Request &req, CompletionFn done, void *ctx) noexcept override {
    auto *f = new (std::nothrow) Forwarded{req, done, ctx, &origin_, live_, 0};
    if (!f)
      return ENOMEM;
    try {
      {
        std::lock_guard lock(live_->mu);
        live_->set.insert(f);
      }
      NbdConnection *target = &target_;
      const void *source = this;
      target_.loop().post([f, target, source] {
        const int rc = target->submit(f->req, &Forwarded::on_done, f, source);
        if (rc != 0)
          Forwarded::on_done(f, rc);
      });
    } catch (...) {
      std::lock_guard lock(live_->mu);
      live_->set.erase(f);
      delete f;
      return ENOMEM;
    }
    return 0;
  }
  // Posted behind every request this queue forwarded, so it reaches them all and nothing the
  // queue submits afterwards.
  void fence() noexcept override { post_to_owner(&NbdConnection::fence, "fence a forwarding queue"); }
  void abandon_fenced() noexcept override {
    post_to_owner(&NbdConnection::abandon_fenced, "abandon a forwarding queue's requests");
  }
  // The owner's loop cancels this queue's requests (waited for: the owner's loop never waits
  // on this one); then every completion not yet delivered is delivered here, now, so none is
  // left to run after the queue is gone.
  void cancel_all() noexcept override {
    NbdConnection *target = &target_;
    const void *source = this;
    try {
      std::promise<void> done;
      target_.loop().post([&done, target, source] {
        target->cancel(source);
        done.set_value();
      });
      done.get_future().wait();
    } catch (...) {
      VB_LOG_ERROR("nbd: cannot cancel a forwarding queue's requests (out of memory)");
    }
    std::unordered_set<Forwarded *> left;
    {
      std::lock_guard lock(live_->mu);
      left.swap(live_->set);
    }
    for (Forwarded *f : left) {
      f->done(f->ctx, f->error); // every one has its answer: cancel() finished the rest
      delete f;
    }
  }

private:
  // Runs the owner connection's call for this queue's requests on the owner's loop.
  void post_to_owner(void (NbdConnection::*call)(const void *) noexcept, const char *what) noexcept {
    NbdConnection *target = &target_;
    const void *source = this;
    try {
      target_.loop().post([target, source, call] { (target->*call)(source); });
    } catch (...) {
      VB_LOG_ERROR("nbd: cannot %s (out of memory)", what);
    }
  }

  struct Forwarded;
  // Forwarded requests whose completion has not been delivered yet; a delivery that finds its
  // request gone (delivered by cancel_all) does nothing.
  struct Live {
    std::mutex mu;
    std::unordered_set<Forwarded *> set;
  };
  struct Forwarded {
    Request req;
    CompletionFn done;
    void *ctx;
    EventLoop *origin;
    std::shared_ptr<Live> live;
    int error; // set on the owner's loop before the completion crosses back
    static void on_done(void *p, int error) noexcept {
      auto *f = static_cast<Forwarded *>(p);
      std::shared_ptr<Live> live = f->live;
      {
        std::lock_guard lock(live->mu);
        f->error = error;
      }
      try {
        f->origin->post([f, live] {
          {
            std::lock_guard lock(live->mu);
            if (live->set.erase(f) == 0)
              return;
          }
          f->done(f->ctx, f->error);
          delete f;
        });
      } catch (...) {
        VB_LOG_ERROR("nbd: cannot return a completion across threads (out of memory)");
      }
    }
  };
  EventLoop &origin_;
  NbdConnection &target_;
  std::shared_ptr<Live> live_;
};

std::string redact(const std::string &uri) { return uri; } // passwords are refused, nothing to hide

// Connects h to uri without ever waiting longer than `limit` or 100 ms past stop() turning true:
// a server that accepts and never answers (or a firewall that drops) must not hold a thread
// longer than the handshake bound, nor a daemon that is stopping. "" when connected, else why not.
std::string connect_within(nbd_handle *h, const std::string &uri, std::chrono::milliseconds limit,
                           const std::function<bool()> &stop) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  if (nbd_aio_connect_uri(h, uri.c_str()) == -1)
    return nbd_get_error() ? nbd_get_error() : "cannot start connecting";
  while (nbd_aio_is_connecting(h)) {
    if (stop())
      return "cancelled";
    if (std::chrono::steady_clock::now() >= deadline)
      return "no answer within " + format_duration(limit) + " (the handshake bound: request-timeout, or 30s)";
    if (nbd_poll(h, 100) == -1)
      break;
  }
  if (nbd_aio_is_ready(h))
    return {};
  const char *why = nbd_get_error();
  return why && *why ? why : "the server closed the connection during the handshake";
}

} // namespace

NbdBackend::NbdBackend(NbdOptions options)
    : options_(std::move(options)), size_([this](std::uint64_t size) { report_resize(size); }) {
  size_.sessions.set_sink([this](State state, const std::string &why) { report_health(state, why); });
}

NbdBackend::~NbdBackend() {
  {
    std::lock_guard lock(poll_mu_);
    stopping_ = true;
  }
  poll_cv_.notify_all();
  if (poller_.joinable())
    poller_.join();
  if (first_)
    nbd_close(first_);
}

void NbdBackend::poll_size_loop() {
  std::unique_lock lock(poll_mu_);
  while (!poll_cv_.wait_for(lock, options_.resize_poll_interval, [this] { return stopping_.load(); })) {
    lock.unlock();
    const std::int64_t size = probe_size();
    if (size > 0)
      size_.observe(static_cast<std::uint64_t>(size));
    lock.lock();
  }
}

// Connects a throw-away handle just long enough to read the export's size; -1 if that fails
// (the data connections deal with an unreachable server, the poller keeps quiet about it).
std::int64_t NbdBackend::probe_size() noexcept {
  constexpr auto kProbeTimeout = std::chrono::seconds(10);
  nbd_handle *h = nullptr;
  try {
    h = make_nbd_handle(options_);
  } catch (const std::exception &e) {
    VB_LOG_DEBUG("nbd: size poll: %s", e.what());
    return -1;
  }
  std::int64_t size = -1;
  if (connect_within(h, options_.uri, kProbeTimeout, [this] { return stopping_.load(); }).empty()) {
    if (export_mismatch(h, caps_, options_.uri).empty())
      size = nbd_get_size(h);
    // A polite NBD_CMD_DISC, so the server does not log an abrupt disconnect.
    if (nbd_aio_disconnect(h, 0) != -1)
      for (int i = 0; i < 10 && !nbd_aio_is_closed(h) && !nbd_aio_is_dead(h); ++i)
        if (nbd_poll(h, 100) == -1)
          break;
  }
  if (size < 0)
    VB_LOG_DEBUG("nbd: size poll failed: %s", nbd_get_error() ? nbd_get_error() : "timed out");
  nbd_close(h);
  return size;
}

void NbdBackend::connect() {
  check_nbd_uri(options_.uri);
  if (!options_.tls_psk_file.empty())
    check_secret_file(options_.tls_psk_file, "tls-psk-file");
  if (!options_.tls_certificates.empty())
    check_secret_file(options_.tls_certificates + "/client-key.pem", "tls-certificates private key");
  nbd_handle *h = make_nbd_handle(options_);
  // The handshake bound of every later connection (nbd_connection.cpp), here too.
  const auto limit = options_.request_timeout.count() > 0 ? options_.request_timeout : std::chrono::milliseconds(30000);
  const std::string error = connect_within(h, options_.uri, limit, [this] { return open_cancelled(); });
  if (!error.empty()) {
    nbd_close(h);
    throw std::runtime_error("cannot connect to " + redact(options_.uri) + ": " + error);
  }
  first_ = h;
  const std::int64_t size = nbd_get_size(h);
  if (size <= 0)
    throw std::runtime_error("the NBD export is empty or its size is unknown");
  // NBD_INFO_BLOCK_SIZE: the minimum is the smallest I/O the server accepts (our logical block),
  // the preferred size is efficient I/O (physical block / optimal I/O), the maximum bounds one
  // command (larger requests are split).
  const std::int64_t minimum = std::max<std::int64_t>(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 0);
  const std::int64_t preferred = std::max<std::int64_t>(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 0);
  const std::int64_t maximum = std::max<std::int64_t>(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), 0);
  const std::uint32_t logical = static_cast<std::uint32_t>(std::max<std::int64_t>(minimum, 512));
  if (logical > 4096 || !std::has_single_bit(logical))
    throw std::runtime_error("the NBD server requires " + std::to_string(logical) +
                             "-byte I/O; virtio-blk supports logical blocks of 512..4096 bytes (powers of two)");
  caps_.size = static_cast<std::uint64_t>(size) / logical * logical;
  caps_.logical_block_size = logical;
  std::uint32_t physical = logical;
  if (preferred > logical && preferred <= (1 << 16) && std::has_single_bit(static_cast<std::uint64_t>(preferred)))
    physical = static_cast<std::uint32_t>(preferred);
  caps_.physical_block_size = physical;
  caps_.optimal_io_size = physical > logical ? physical : 0;
  caps_.max_transfer = maximum >= logical ? static_cast<std::uint32_t>(std::min<std::int64_t>(maximum, 1LL << 30)) : 0;
  caps_.read_only = nbd_is_read_only(h) == 1;
  caps_.can_flush = nbd_can_flush(h) == 1;
  caps_.can_discard = nbd_can_trim(h) == 1;
  caps_.can_write_zeroes = nbd_can_zero(h) == 1;
  caps_.can_zero_unmap = caps_.can_write_zeroes && caps_.can_discard;
  caps_.identity = export_identity(options_.uri, h);
  size_.init(caps_.size, logical);
  const bool multi_conn = nbd_can_multi_conn(h) == 1;
  connections_ = multi_conn ? std::max(1u, options_.connections) : 1;
  owners_.assign(connections_, nullptr);
  VB_LOG_INFO("nbd: %s: %s, %u-byte blocks, max command %s%s%s%s%s, %u connection(s)%s", options_.uri.c_str(),
              format_size(caps_.size).c_str(), logical,
              caps_.max_transfer ? format_size(caps_.max_transfer).c_str() : "32 MiB (default)",
              caps_.read_only ? ", read-only" : "", caps_.can_flush ? ", flush" : "", caps_.can_discard ? ", trim" : "",
              caps_.can_write_zeroes ? ", zero" : "", connections_,
              multi_conn ? "" : " (the server does not advertise multi-conn)");
  if (options_.resize_poll_interval.count() > 0)
    poller_ = std::thread([this] { poll_size_loop(); });
}

std::size_t NbdBackend::bounce_bytes() const {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (const NbdConnection *c : owners_)
    n += c ? c->bounce_bytes() : 0;
  return n;
}

std::unique_ptr<BackendQueue> NbdBackend::open_queue(EventLoop &loop, unsigned index) {
  std::lock_guard lock(mu_);
  if (index < connections_) {
    nbd_handle *h = nullptr;
    if (index == 0) {
      h = first_;
      first_ = nullptr;
    }
    // Connections other than the first connect in the background on their own loop.
    auto conn = std::make_unique<NbdConnection>(loop, options_, caps_, size_, h, "nbd conn " + std::to_string(index));
    owners_[index] = conn.get();
    return std::make_unique<OwnedQueue>(std::move(conn));
  }
  NbdConnection *target = owners_[index % connections_];
  if (!target)
    throw std::runtime_error("nbd: queue " + std::to_string(index) + " opened before its connection's owner");
  return std::make_unique<ForwardingQueue>(loop, *target);
}

} // namespace vb
