// One virtio-blk request: a validated, mapped descriptor chain turned into either a backend
// Request or an immediate answer, with the status byte located.
//
// Everything in the chain's buffers is written by the driver, which may be a hostile VM guest
// and may change that memory while we parse it. The request is parsed by byte position only
// (the header may be split across buffers at any byte, data may start or end mid-buffer, the
// status byte is the last device-writable byte), each header and segment is copied out once
// before it is checked, and all arithmetic is overflow-checked.
//
// Threading: pure functions, noexcept, no allocation; call them on the queue's loop thread,
// which owns the ParsedRequest and the chain's memory.
#pragma once

#include "vduse-bridge/backend.h"
#include "virtio/chain.h"
#include "virtio_blk/blk_device.h"

#include <cstdint>
#include <linux/virtio_blk.h>
#include <sys/uio.h>

namespace vb::blk {

// What the caller does with a parsed request.
enum class Action : std::uint8_t {
  // Answer now: finish_request(req, 0) writes `status` and returns the used length.
  complete,
  // Submit `backend`; when it completes with error e, finish_request(req, e).
  submit,
  // The chain has no device-writable byte, so no status can be reported. Return the head with
  // used length 0 so the descriptor is not leaked (finish_request returns 0, writes nothing).
  drop,
};

// Per-request state, preallocated per in-flight slot: parse_request() fills it, the backend
// reads backend.iov (which points into iov below) until completion. Not copyable, because
// backend.iov points into the object itself.
struct ParsedRequest {
  ParsedRequest() = default;
  ParsedRequest(const ParsedRequest &) = delete;
  ParsedRequest &operator=(const ParsedRequest &) = delete;

  Action action = Action::drop;
  std::uint32_t type = 0;   // header type, as sent (VIRTIO_BLK_T_*)
  std::uint64_t sector = 0; // header sector, as sent
  // For Action::complete: the status to report (VIRTIO_BLK_S_*).
  std::uint8_t status = VIRTIO_BLK_S_IOERR;
  // The last device-writable byte of the chain; nullptr only with Action::drop.
  std::uint8_t *status_byte = nullptr;
  // For Action::complete: bytes written into device-writable buffers, status byte included
  // (1, or 1 + the GET_ID bytes). For Action::submit see used_len_for().
  std::uint32_t used_len = 0;
  // For Action::submit: the operation; iov/iovcnt describe the data of reads and writes.
  Request backend;
  iovec iov[virtio::kMaxChainIovecs];

  bool needs_backend() const noexcept { return action == Action::submit; }
  bool dropped() const noexcept { return action == Action::drop; }
};

// Parses and validates chain against params into out (overwriting all of it). Never fails: a
// malformed or unsupported request becomes Action::complete with IOERR or UNSUPP. GET_ID is
// answered here: the serial is copied into the chain's writable data area.
//
// Rules (virtio 1.2 5.2.6): IN/OUT: offset and length multiples of the logical block size and
// within capacity, else IOERR; OUT (and DISCARD, WRITE_ZEROES) on a read-only device: IOERR;
// zero-length IN/OUT: OK without the backend. FLUSH: Op::flush, UNSUPP unless offered.
// DISCARD/WRITE_ZEROES: UNSUPP unless offered; payload not a whole number (>= 1) of 16-byte
// segments: IOERR; more than one segment: UNSUPP; unknown flags or UNMAP on DISCARD: UNSUPP;
// range, alignment or size over the advertised maximum: IOERR. Other types: UNSUPP.
void parse_request(const virtio::Chain &chain, const DeviceParams &params, ParsedRequest &out) noexcept;

// 0 -> VIRTIO_BLK_S_OK, EOPNOTSUPP/ENOTSUP -> VIRTIO_BLK_S_UNSUPP, anything else -> IOERR
// (errnos are positive across the backend interface: a negative value is not one).
std::uint8_t status_from_errno(int err) noexcept;

// The used length to report for req finished with error (0 or an errno): for a successful
// read, the data bytes plus the status byte; for other submitted requests 1; for
// Action::complete req.used_len (error ignored); for Action::drop 0.
std::uint32_t used_len_for(const ParsedRequest &req, int error) noexcept;

// Finishes req: writes its status byte (status_from_errno(error) for Action::submit,
// req.status for Action::complete, nothing for Action::drop) and returns used_len_for().
// Call exactly once per parsed request, then push the chain's head with the result.
std::uint32_t finish_request(const ParsedRequest &req, int error) noexcept;

} // namespace vb::blk
