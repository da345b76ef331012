// The daemon's own NBD transmission path, for plaintext connections once libnbd has done the
// handshake: requests are queued and written together (one sendmsg for every command of a
// queue's drain, write payloads straight from the guest's buffers), and replies are read in as
// few receive calls as the bytes allow (many small replies per call, instead of libnbd's two
// calls per reply; large read payloads straight into the destination). libnbd keeps the
// handshake, TLS (connections with TLS never come here), the socket and its closing.
//
// Only simple replies are understood (the connection asks for no structured replies and no
// extended headers). Replies are hostile input: a wrong magic, a cookie that names no command in
// flight, or the end of the stream stops the transport, and the connection is replaced; nothing
// the server sends is written anywhere but the destination of the command it answers, within
// that command's length.
//
// Threading: one loop thread. The completion callback may issue new commands or abandon the
// transport; the transport must not be destroyed while receive() runs.
#pragma once

#include "nbd/nbd_wire.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <sys/uio.h>
#include <vector>

namespace vb {

class NbdTransport {
public:
  using DoneFn = void (*)(void *ctx, int error) noexcept;
  // fd: the connected socket (libnbd's; never closed here).
  NbdTransport(int fd, DoneFn done);
  NbdTransport(const NbdTransport &) = delete;
  NbdTransport &operator=(const NbdTransport &) = delete;

  // Queues one command for flush(). data: the read destination or the write source, length
  // bytes, or nullptr. False when out of memory (nothing queued).
  bool issue(nbd_wire::Command type, std::uint16_t flags, std::uint64_t offset, std::uint32_t length, char *data,
             void *ctx) noexcept;
  // The same for a read or a write whose data is scattered over iov (at least length bytes;
  // the array must stay valid until the command completes): received into, or sent from, the
  // pieces themselves (no bounce copy).
  bool issue(nbd_wire::Command type, std::uint64_t offset, std::uint32_t length, const iovec *iov, int iovcnt,
             void *ctx) noexcept;
  // Writes what is queued, as far as the socket takes it. False, why set, if the socket failed.
  bool flush(std::string &why) noexcept;
  bool want_write() const noexcept { return send_head_ < send_.size(); }
  // Reads replies and completes their commands (done(ctx, errno)) until the socket has no more,
  // or a bounded number of receive calls were made (the socket stays readable then; nothing is
  // left staged). False, why set, when the stream ended or cannot be followed; the commands not
  // completed are left to the caller. A failed read's reply carries no payload (as libnbd and the
  // common servers have it); a server that sends one anyway desynchronises the stream, which then
  // fails as not a simple reply.
  bool receive(std::string &why) noexcept;
  // Every command is forgotten: no callback runs for any of them afterwards.
  void abandon() noexcept;
  // The driver reset: ctx's commands not written to the socket at all yet are taken back (no
  // callback for them); returns how many. A command partly written stays (it must be finished).
  std::size_t drop_unsent(const void *ctx) noexcept;
  // Whether a command of ctx may still touch its buffers: a read not answered, a write whose
  // header or payload is not fully written.
  bool touches_buffers(const void *ctx) const noexcept;
  std::size_t in_flight() const noexcept { return in_flight_; }

private:
  struct Cmd {
    std::uint8_t header[nbd_wire::kRequestSize];
    char *data = nullptr;       // contiguous data, or
    const iovec *iov = nullptr; // scattered data
    int iovcnt = 0;
    std::uint32_t length = 0;
    std::uint32_t index = 0; // in cmds_: the lower half of the cookie
    std::uint32_t seq = 0;   // the upper half: a stale or made-up cookie is caught
    bool read = false;
    bool in_use = false;
    std::uint16_t unsent = 0; // entries of send_ not yet fully written (header, payload): no reply yet
    void *ctx = nullptr;
  };
  Cmd *lookup(std::uint64_t cookie) noexcept;
  bool queue(nbd_wire::Command type, std::uint16_t flags, std::uint64_t offset, std::uint32_t length, char *data,
             const iovec *iov, int iovcnt, void *ctx) noexcept;
  void deliver(const std::uint8_t *src, std::uint32_t n) noexcept; // into current_ at current_got_
  void finish(Cmd *cmd, int error) noexcept;
  bool consume(std::string &why) noexcept;

  int fd_;
  DoneFn done_;
  std::vector<std::unique_ptr<Cmd>> cmds_; // by the cookie's lower half; addresses stable
  std::vector<std::uint32_t> free_;
  std::uint32_t next_seq_ = 1;
  std::size_t in_flight_ = 0;
  std::size_t large_reads_ = 0;    // reads in flight whose payload is better received in place
  void release(Cmd *cmd) noexcept; // back to the free list, no callback
  std::vector<iovec> send_;        // queued request headers and write payloads
  struct SendEntry {
    Cmd *cmd;
    bool header; // else the write payload following its header
  };
  std::vector<SendEntry> send_cmd_; // for each entry of send_: whose it is
  std::size_t send_head_ = 0;
  bool head_partial_ = false; // send_[send_head_] is partly written
  // Received bytes not consumed yet: [stage_begin_, stage_end_) of stage_.
  std::unique_ptr<std::uint8_t[]> stage_;
  std::size_t stage_begin_ = 0, stage_end_ = 0;
  Cmd *current_ = nullptr; // the read whose payload is arriving
  std::uint32_t current_got_ = 0;
  std::uint64_t epoch_ = 0; // bumped by abandon(): a receive() in progress stops
};

} // namespace vb
