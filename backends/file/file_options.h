// What a file backend serves and how: plain values, no parsing (the configuration layer fills
// them in). Every field has a usable default except path.
//
// Threading: none; FileBackend keeps its own copy.
#pragma once

#include "vduse-bridge/backend_module.h"

#include <chrono>
#include <cstddef>
#include <string>

namespace vb {

struct FileBackendOptions : BackendOptionsOf<FileBackendOptions> {
  // O_DIRECT: automatic = used when the filesystem allows it (tmpfs before Linux 6.6 and ramfs
  // do not), else the page cache; on = required (open() fails without it); off = never.
  enum class Direct { automatic, on, off };

  std::string path;                  // a regular file or a block device; must exist (never created)
  Direct direct = Direct::automatic; // see Direct
  bool read_only = false;            // opened O_RDONLY; the disk is read-only
  // io_uring entries per queue, 1..4096: at most this many requests of a queue are in the
  // kernel at once; more wait in arrival order.
  unsigned queue_depth = 128;
  // Per queue, bytes: bounce buffers in use at once for O_DIRECT requests whose buffers are not
  // aligned (a request waits while they are taken; one larger than this goes through in pieces;
  // 0 = one block-sized piece of one request at a time).
  std::size_t bounce_limit = std::size_t{4} << 20;
  // How often queue 0 looks at the file's size (st_size, or the block device's) and reports a
  // change as a resize; 0 = never.
  std::chrono::milliseconds resize_poll_interval{5000};

  bool operator==(const FileBackendOptions &) const = default;
};

extern const BackendModule file_backend_module;

} // namespace vb
