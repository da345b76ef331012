// A process-wide SIGBUS handler for memory that someone else can truncate: a VMM's guest memory
// file (vhost-vdpa) mapped into this root daemon. An access past the end of a truncated file
// raises SIGBUS; for a guarded range the handler swaps the whole range for anonymous memory
// (the faulting access then completes on scratch bytes) and marks it poisoned, so only the
// device that owns the range loses its memory. A fault anywhere else is not ours: the previous
// handler (the default one, or a sanitizer's) gets it.
//
// System calls that touch the range (send, recv) fail with EFAULT instead and need no help.
//
// Threading: any thread; add() and remove() are lock-free and safe against the handler.
#pragma once

#include <cstddef>

namespace vb::vduse::sigbus_guard {

// Guards [addr, addr + len). Returns a slot for poisoned() and remove(), or -1 when the table
// is full (the caller refuses the mapping).
int add(void *addr, std::size_t len) noexcept;
// Stops guarding the slot; call before the range is unmapped.
void remove(int slot) noexcept;
// Whether an access to the slot's range faulted.
bool poisoned(int slot) noexcept;
// Faults caught since start-up (for tests and logs).
unsigned long caught() noexcept;

} // namespace vb::vduse::sigbus_guard
