#include "vduse/iotlb_cache.h"

#include "common/errors.h"
#include "common/log.h"

#include <cerrno>
#include <linux/vduse.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

namespace vb::vduse {
namespace {

bool allows(std::uint8_t perm, bool write) { return (perm & (write ? VDUSE_ACCESS_WO : VDUSE_ACCESS_RO)) != 0; }

} // namespace

IotlbCache::~IotlbCache() {
  for (const auto &r : regions_)
    ::munmap(r.addr, r.length);
  for (const auto &[addr, len] : retired_)
    ::munmap(addr, len);
}

const IotlbCache::Region *IotlbCache::lookup(std::uint64_t iova) noexcept {
  for (const auto &r : regions_)
    if (iova >= r.start && iova <= r.last)
      return &r;

  vduse_iotlb_entry entry{};
  entry.start = iova;
  entry.last = iova;
  const int fd = ::ioctl(fd_, VDUSE_IOTLB_GET_FD, &entry);
  if (fd < 0)
    return nullptr; // EINVAL: nothing mapped there. The request fails; the daemon does not.
  if (entry.last < entry.start || entry.start > iova || entry.last < iova || entry.last - entry.start >= SIZE_MAX) {
    ::close(fd);
    return nullptr;
  }
  const std::size_t length = entry.last - entry.start + 1;
  int prot = 0;
  if (entry.perm & VDUSE_ACCESS_RO)
    prot |= PROT_READ;
  if (entry.perm & VDUSE_ACCESS_WO)
    prot |= PROT_WRITE;
  void *addr = ::mmap(nullptr, length, prot, MAP_SHARED, fd, static_cast<off_t>(entry.offset));
  const int err = errno;
  ::close(fd);
  if (addr == MAP_FAILED) {
    VB_LOG_ERROR("mmap of IOVA region [0x%llx, 0x%llx]: %s", static_cast<unsigned long long>(entry.start),
                 static_cast<unsigned long long>(entry.last), errno_text(err));
    return nullptr;
  }
  VB_LOG_DEBUG("mapped IOVA [0x%llx, 0x%llx] perm %u", static_cast<unsigned long long>(entry.start),
               static_cast<unsigned long long>(entry.last), entry.perm);
  regions_.push_back({entry.start, entry.last, static_cast<std::uint8_t *>(addr), length, entry.perm});
  return &regions_.back();
}

bool IotlbCache::map(std::uint64_t iova, std::uint64_t len, bool write, iovec *out, unsigned &n,
                     unsigned cap) noexcept {
  if (len == 0)
    return true;
  if (iova + (len - 1) < iova)
    return false; // wraps around the address space
  std::lock_guard lock(mu_);
  std::uint64_t pos = iova;
  std::uint64_t left = len;
  while (left > 0) {
    const Region *r = lookup(pos);
    if (!r || !allows(r->perm, write) || n >= cap)
      return false;
    const std::uint64_t in_region = r->last - pos + 1; // >= 1; cannot overflow unless the region is the
    const std::uint64_t piece = in_region == 0 ? left : std::min(left, in_region); // whole 2^64 space
    out[n].iov_base = r->addr + (pos - r->start);
    out[n].iov_len = piece;
    ++n;
    pos += piece;
    left -= piece;
  }
  return true;
}

void *IotlbCache::map_contiguous(std::uint64_t iova, std::uint64_t len, bool write) noexcept {
  if (len == 0 || iova + (len - 1) < iova)
    return nullptr;
  std::lock_guard lock(mu_);
  const Region *r = lookup(iova);
  if (!r || !allows(r->perm, write) || iova + (len - 1) > r->last)
    return nullptr;
  return r->addr + (iova - r->start);
}

void IotlbCache::retire(const Region &r) noexcept {
  // Swap the pages for private anonymous memory at the same address, atomically: a backend still
  // finishing a request on this buffer reads zeros or writes into scratch instead of faulting.
  void *p =
      ::mmap(r.addr, r.length, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    ::munmap(r.addr, r.length);
    return;
  }
  retired_.emplace_back(p, r.length);
}

void IotlbCache::invalidate(std::uint64_t start, std::uint64_t last) noexcept {
  std::lock_guard lock(mu_);
  for (std::size_t i = 0; i < regions_.size();) {
    const Region &r = regions_[i];
    if (r.start <= last && start <= r.last) {
      retire(r);
      regions_[i] = regions_.back();
      regions_.pop_back();
    } else {
      ++i;
    }
  }
}

void IotlbCache::reset() noexcept { invalidate(0, UINT64_MAX); }

std::size_t IotlbCache::cached_regions() const {
  std::lock_guard lock(mu_);
  return regions_.size();
}

} // namespace vb::vduse
