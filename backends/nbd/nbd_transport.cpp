#include "nbd/nbd_transport.h"

#include "common/errors.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sys/socket.h>

namespace vb {

namespace {
// Received bytes staged before they are parsed: room for many small replies per receive call.
constexpr std::size_t kStageSize = std::size_t{64} * 1024;
// Read payloads at least this large are received in place rather than staged and copied
// (a copy of a large payload costs more than the receive call it saves).
constexpr std::uint32_t kLargeRead = 16 * 1024;
// Receive calls per receive() before yielding to the loop (the socket stays readable); what
// one call brought is always parsed whole (at most kStageSize / 16 replies).
constexpr unsigned kReceiveBudget = 16;
constexpr std::size_t kMaxIov = IOV_MAX;
// Pieces of a scattered read received in place per call (the rest in the next call).
constexpr int kMaxDirectPieces = 64;
} // namespace

NbdTransport::NbdTransport(int fd, DoneFn done)
    : fd_(fd), done_(done), stage_(std::make_unique<std::uint8_t[]>(kStageSize)) {}

bool NbdTransport::issue(nbd_wire::Command type, std::uint16_t flags, std::uint64_t offset, std::uint32_t length,
                         char *data, void *ctx) noexcept {
  const iovec one{data, length};
  return queue(type, flags, offset, length, data, data ? &one : nullptr, data ? 1 : 0, ctx);
}

bool NbdTransport::issue(nbd_wire::Command type, std::uint64_t offset, std::uint32_t length, const iovec *iov,
                         int iovcnt, void *ctx) noexcept {
  return queue(type, 0, offset, length, nullptr, iov, iovcnt, ctx);
}

// Queues a command: its header, and for a write the pieces of its payload (iov, length bytes).
bool NbdTransport::queue(nbd_wire::Command type, std::uint16_t flags, std::uint64_t offset, std::uint32_t length,
                         char *data, const iovec *iov, int iovcnt, void *ctx) noexcept {
  const bool write = type == nbd_wire::Command::write && length > 0;
  const std::size_t entries = 1 + (write ? static_cast<std::size_t>(iovcnt) : 0);
  if (entries > 0xffff)
    return false;
  std::uint64_t have = 0;
  for (int i = 0; i < iovcnt; ++i)
    have += iov[i].iov_len;
  if ((type == nbd_wire::Command::read || write) && have < length)
    return false; // the pieces must hold the whole payload, or the stream could not be followed
  std::uint32_t index = 0;
  try {
    // Grown geometrically, kept across flushes: no allocation per command once warm.
    if (send_.capacity() < send_.size() + entries) {
      send_.reserve(std::max<std::size_t>({64, 2 * send_.capacity(), send_.size() + entries}));
      send_cmd_.reserve(send_.capacity());
    }
    if (free_.empty()) {
      if (free_.capacity() < cmds_.size() + 1) // so that finish() never allocates
        free_.reserve(std::max<std::size_t>(64, 2 * free_.capacity()));
      cmds_.push_back(std::make_unique<Cmd>());
      index = static_cast<std::uint32_t>(cmds_.size() - 1);
    } else {
      index = free_.back();
      free_.pop_back();
    }
  } catch (const std::bad_alloc &) {
    return false;
  }
  Cmd *cmd = cmds_[index].get();
  cmd->index = index;
  cmd->seq = next_seq_++;
  if (next_seq_ == 0)
    next_seq_ = 1;
  cmd->data = data;
  cmd->iov = data ? nullptr : iov;
  cmd->iovcnt = data ? 0 : iovcnt;
  cmd->length = length;
  cmd->read = type == nbd_wire::Command::read;
  cmd->in_use = true;
  cmd->ctx = ctx;
  const std::uint64_t cookie = (std::uint64_t{cmd->seq} << 32) | index;
  nbd_wire::encode_request(cmd->header, type, flags, cookie, offset, length);
  send_.push_back({cmd->header, sizeof cmd->header});
  send_cmd_.push_back({cmd, true});
  cmd->unsent = 1;
  if (write) {
    std::uint32_t left = length;
    for (int i = 0; i < iovcnt && left > 0; ++i) {
      const auto n = static_cast<std::uint32_t>(std::min<std::size_t>(iov[i].iov_len, left));
      if (n == 0)
        continue;
      send_.push_back({iov[i].iov_base, n});
      send_cmd_.push_back({cmd, false});
      ++cmd->unsent;
      left -= n;
    }
  }
  ++in_flight_;
  if (cmd->read && length >= kLargeRead)
    ++large_reads_;
  return true;
}

// Copies n staged bytes into the read being received, at current_got_, across its pieces.
void NbdTransport::deliver(const std::uint8_t *src, std::uint32_t n) noexcept {
  if (current_->data) {
    std::memcpy(current_->data + current_got_, src, n);
    current_got_ += n;
    return;
  }
  std::uint32_t skip = current_got_;
  for (int i = 0; i < current_->iovcnt && n > 0; ++i) {
    const auto len = static_cast<std::uint32_t>(current_->iov[i].iov_len);
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const std::uint32_t c = std::min(len - skip, n);
    std::memcpy(static_cast<char *>(current_->iov[i].iov_base) + skip, src, c);
    src += c;
    n -= c;
    current_got_ += c;
    skip = 0;
  }
}

bool NbdTransport::flush(std::string &why) noexcept {
  while (send_head_ < send_.size()) {
    msghdr msg{};
    msg.msg_iov = &send_[send_head_];
    msg.msg_iovlen = std::min(send_.size() - send_head_, kMaxIov);
    const ssize_t n = ::sendmsg(fd_, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return true; // the rest when the socket is writable again
      why = std::string("send: ") + errno_text(errno);
      return false;
    }
    auto left = static_cast<std::size_t>(n);
    while (left > 0 && send_head_ < send_.size()) {
      iovec &v = send_[send_head_];
      if (left >= v.iov_len) {
        left -= v.iov_len;
        --send_cmd_[send_head_].cmd->unsent;
        ++send_head_;
        head_partial_ = false;
      } else {
        v.iov_base = static_cast<char *>(v.iov_base) + left;
        v.iov_len -= left;
        left = 0;
        head_partial_ = true;
      }
    }
  }
  send_.clear();
  send_cmd_.clear();
  send_head_ = 0;
  head_partial_ = false;
  return true;
}

std::size_t NbdTransport::drop_unsent(const void *ctx) noexcept {
  // Entries before first are written, or partly (a command whose header went out must be
  // finished, its payload too); from first on nothing of them is at the server.
  std::size_t first = send_head_ + (head_partial_ ? 1 : 0);
  while (first < send_.size() && !send_cmd_[first].header)
    ++first; // the rest of a payload whose header is written
  std::size_t kept = first, dropped = 0;
  for (std::size_t i = first; i < send_.size(); ++i) {
    Cmd *cmd = send_cmd_[i].cmd;
    if (send_cmd_[i].header && cmd->ctx == ctx) {
      while (i + 1 < send_.size() && !send_cmd_[i + 1].header)
        ++i; // its payload's pieces
      release(cmd);
      ++dropped;
      continue;
    }
    send_[kept] = send_[i];
    send_cmd_[kept] = send_cmd_[i];
    ++kept;
  }
  send_.resize(kept);
  send_cmd_.resize(kept);
  return dropped;
}

bool NbdTransport::touches_buffers(const void *ctx) const noexcept {
  for (const auto &cmd : cmds_)
    if (cmd->in_use && cmd->ctx == ctx && (cmd->read || cmd->unsent > 0))
      return true;
  return false;
}

void NbdTransport::release(Cmd *cmd) noexcept {
  if (!cmd->in_use)
    std::abort(); // twice: the counts below would wrap
  if (cmd->read && cmd->length >= kLargeRead)
    --large_reads_;
  cmd->in_use = false;
  cmd->ctx = nullptr;
  free_.push_back(cmd->index); // never allocates: reserved in issue()
  --in_flight_;
}

NbdTransport::Cmd *NbdTransport::lookup(std::uint64_t cookie) noexcept {
  const auto index = static_cast<std::uint32_t>(cookie);
  if (index >= cmds_.size())
    return nullptr;
  Cmd *cmd = cmds_[index].get();
  // A reply to a command not fully written is made up (cookies are guessable): taking it would
  // free a slot that send_ still points into.
  if (!cmd->in_use || cmd->seq != static_cast<std::uint32_t>(cookie >> 32) || cmd->unsent > 0)
    return nullptr;
  return cmd;
}

void NbdTransport::finish(Cmd *cmd, int error) noexcept {
  void *ctx = cmd->ctx;
  release(cmd);
  done_(ctx, error);
}

// Parses what is staged: headers, and payloads of the read being received. False, why set, on a
// reply that cannot be followed. Stops early (true) after abandon().
bool NbdTransport::consume(std::string &why) noexcept {
  const std::uint64_t epoch = epoch_;
  while (epoch == epoch_) {
    const std::size_t staged = stage_end_ - stage_begin_;
    if (current_) {
      const std::uint32_t want = current_->length - current_got_;
      const auto n = static_cast<std::uint32_t>(std::min<std::size_t>(staged, want));
      deliver(stage_.get() + stage_begin_, n);
      stage_begin_ += n;
      if (current_got_ < current_->length)
        return true; // more payload to come
      Cmd *done = current_;
      current_ = nullptr;
      finish(done, 0);
      continue;
    }
    if (staged < nbd_wire::kReplySize)
      return true;
    nbd_wire::Reply reply;
    if (!nbd_wire::decode_reply(stage_.get() + stage_begin_, reply)) {
      why = "the server sent something that is not a simple reply";
      return false;
    }
    stage_begin_ += nbd_wire::kReplySize;
    Cmd *cmd = lookup(reply.cookie);
    if (!cmd) {
      why = "the server answered a command that is not in flight (cookie " + std::to_string(reply.cookie) + ")";
      return false;
    }
    if (cmd->read && reply.error == 0 && cmd->length > 0) {
      current_ = cmd;
      current_got_ = 0;
      continue;
    }
    finish(cmd, nbd_wire::errno_of(reply.error)); // a failed read too: no payload follows
  }
  return true;
}

bool NbdTransport::receive(std::string &why) noexcept {
  const std::uint64_t epoch = epoch_;
  unsigned budget = kReceiveBudget;
  // A receive that returned less than it asked for emptied the socket: another one now would
  // only say EAGAIN (a system call per wake-up for nothing); the loop's poll says when more came.
  bool drained = false;
  for (;;) {
    if (!consume(why))
      return false;
    if (epoch != epoch_ || budget-- == 0 || drained)
      return true;
    // Everything staged is parsed (or a payload is incomplete with nothing staged).
    if (stage_begin_ == stage_end_)
      stage_begin_ = stage_end_ = 0;
    else if (stage_begin_ > 0) {
      std::memmove(stage_.get(), stage_.get() + stage_begin_, stage_end_ - stage_begin_);
      stage_end_ -= stage_begin_;
      stage_begin_ = 0;
    }
    iovec iov[kMaxDirectPieces + 1];
    int iovcnt = 0;
    std::uint32_t direct = 0;
    if (current_ && current_->length - current_got_ >= kLargeRead / 2 && stage_end_ == 0) {
      // The rest of a large payload in place (in its pieces), and whatever follows it staged.
      if (current_->data) {
        direct = current_->length - current_got_;
        iov[iovcnt++] = {current_->data + current_got_, direct};
      } else {
        std::uint32_t skip = current_got_, left = current_->length - current_got_;
        for (int i = 0; i < current_->iovcnt && left > 0 && iovcnt < kMaxDirectPieces; ++i) {
          const auto len = static_cast<std::uint32_t>(current_->iov[i].iov_len);
          if (skip >= len) {
            skip -= len;
            continue;
          }
          const std::uint32_t c = std::min(len - skip, left);
          iov[iovcnt++] = {static_cast<char *>(current_->iov[i].iov_base) + skip, c};
          direct += c;
          left -= c;
          skip = 0;
        }
      }
    }
    std::size_t room = kStageSize - stage_end_;
    // A large read may be next: take only a header, so that its payload is received in place.
    if (!current_ && large_reads_ > 0 && stage_end_ < nbd_wire::kReplySize)
      room = nbd_wire::kReplySize - stage_end_;
    iov[iovcnt++] = {stage_.get() + stage_end_, room};
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(iovcnt);
    const ssize_t n = ::recvmsg(fd_, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return true;
      why = std::string("receive: ") + errno_text(errno);
      return false;
    }
    if (n == 0) {
      why = "the server closed the connection";
      return false;
    }
    auto got = static_cast<std::size_t>(n);
    drained = got < direct + room;
    if (direct > 0) {
      const auto in_place = static_cast<std::uint32_t>(std::min<std::size_t>(got, direct));
      current_got_ += in_place;
      got -= in_place;
      if (current_got_ == current_->length) {
        Cmd *done = current_;
        current_ = nullptr;
        stage_end_ += got;
        finish(done, 0);
        if (epoch != epoch_)
          return true;
        continue;
      }
    }
    stage_end_ += got;
  }
}

void NbdTransport::abandon() noexcept {
  ++epoch_;
  for (auto &c : cmds_) {
    c->in_use = false;
    c->ctx = nullptr;
  }
  free_.clear();
  for (std::uint32_t i = 0; i < cmds_.size(); ++i)
    free_.push_back(i);
  in_flight_ = 0;
  large_reads_ = 0;
  send_.clear();
  send_cmd_.clear();
  send_head_ = 0;
  head_partial_ = false;
  stage_begin_ = stage_end_ = 0;
  current_ = nullptr;
  current_got_ = 0;
}

} // namespace vb
