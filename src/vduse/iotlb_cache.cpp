#include "vduse/iotlb_cache.h"

#include "common/errors.h"
#include "common/log.h"
#include "vduse/sigbus_guard.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace vb::vduse {
namespace {

bool allows(std::uint8_t perm, bool write) { return (perm & (write ? VDUSE_ACCESS_WO : VDUSE_ACCESS_RO)) != 0; }

unsigned long long ull(std::uint64_t v) { return static_cast<unsigned long long>(v); }

// A regular file (a VMM's memfd) must hold the whole region, or the first access past its end
// faults. Anything else (the kernel's bounce buffer is an anonymous inode) has no size to check.
bool file_covers(int fd, const vduse_iotlb_entry &e, std::size_t length) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
    return true;
  const auto size = static_cast<std::uint64_t>(st.st_size);
  return e.offset <= size && length <= size - e.offset;
}

} // namespace

IotlbCache::IotlbCache(int device_fd)
    : source_([device_fd](vduse_iotlb_entry &entry) { return ::ioctl(device_fd, VDUSE_IOTLB_GET_FD, &entry); }) {}

IotlbCache::IotlbCache(RegionSource source) : source_(std::move(source)) {}

IotlbCache::~IotlbCache() {
  for (const auto &r : regions_)
    unmap(r);
  for (const auto &r : retired_)
    unmap(r.region);
}

void IotlbCache::unmap(const Region &r) noexcept {
  sigbus_guard::remove(r.guard);
  ::munmap(r.addr, r.length);
}

const IotlbCache::Region *IotlbCache::lookup(std::uint64_t iova) noexcept {
  for (const auto &r : regions_)
    if (iova >= r.start && iova <= r.last)
      return sigbus_guard::poisoned(r.guard) ? nullptr : &r;

  vduse_iotlb_entry entry{};
  entry.start = iova;
  entry.last = iova;
  const int fd = source_(entry);
  if (fd < 0)
    return nullptr; // EINVAL: nothing mapped there. The request fails; the daemon does not.
  if (entry.last < entry.start || entry.start > iova || entry.last < iova || entry.last - entry.start >= SIZE_MAX) {
    ::close(fd);
    return nullptr;
  }
  const std::size_t length = entry.last - entry.start + 1;
  if (!file_covers(fd, entry, length)) {
    ::close(fd);
    VB_LOG_ERROR("IOVA region [0x%llx, 0x%llx]: its memory file is shorter than the region (truncated by the VMM?); "
                 "requests there fail",
                 ull(entry.start), ull(entry.last));
    return nullptr;
  }
  int prot = 0;
  if (entry.perm & VDUSE_ACCESS_RO)
    prot |= PROT_READ;
  if (entry.perm & VDUSE_ACCESS_WO)
    prot |= PROT_WRITE;
  void *addr = ::mmap(nullptr, length, prot, MAP_SHARED, fd, static_cast<off_t>(entry.offset));
  const int err = errno;
  ::close(fd);
  if (addr == MAP_FAILED) {
    VB_LOG_ERROR("mmap of IOVA region [0x%llx, 0x%llx]: %s", ull(entry.start), ull(entry.last), errno_text(err));
    return nullptr;
  }
  const int guard = sigbus_guard::add(addr, length);
  if (guard < 0) {
    ::munmap(addr, length);
    VB_LOG_ERROR("IOVA region [0x%llx, 0x%llx]: too many mapped regions in this process", ull(entry.start),
                 ull(entry.last));
    return nullptr;
  }
  VB_LOG_DEBUG("mapped IOVA [0x%llx, 0x%llx] perm %u", ull(entry.start), ull(entry.last), entry.perm);
  regions_.push_back({entry.start, entry.last, static_cast<std::uint8_t *>(addr), length, entry.perm, guard});
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

std::uint64_t IotlbCache::pin() noexcept {
  std::lock_guard lock(mu_);
  if (pins_.empty() || pins_.back().first != epoch_)
    pins_.emplace_back(epoch_, 0); // epochs only grow: the list stays sorted
  ++pins_.back().second;
  return epoch_;
}

void IotlbCache::unpin(std::uint64_t token) noexcept {
  std::lock_guard lock(mu_);
  auto it = std::find_if(pins_.begin(), pins_.end(), [token](const auto &p) { return p.first == token; });
  if (it == pins_.end())
    return;
  if (--it->second == 0) {
    pins_.erase(it);
    release_unpinned();
  }
}

// A region retired in epoch E may be used by pins of epochs <= E only.
void IotlbCache::release_unpinned() noexcept {
  const std::uint64_t oldest = pins_.empty() ? UINT64_MAX : pins_.front().first;
  for (std::size_t i = 0; i < retired_.size();) {
    if (retired_[i].epoch < oldest) {
      unmap(retired_[i].region);
      retired_[i] = retired_.back();
      retired_.pop_back();
    } else {
      ++i;
    }
  }
}

void IotlbCache::invalidate(std::uint64_t start, std::uint64_t last) noexcept {
  std::lock_guard lock(mu_);
  bool any = false;
  for (std::size_t i = 0; i < regions_.size();) {
    const Region &r = regions_[i];
    if (r.start <= last && start <= r.last) {
      retired_.push_back({r, epoch_});
      regions_[i] = regions_.back();
      regions_.pop_back();
      any = true;
    } else {
      ++i;
    }
  }
  if (!any)
    return;
  ++epoch_;
  release_unpinned();
}

void IotlbCache::reset() noexcept { invalidate(0, UINT64_MAX); }

std::size_t IotlbCache::cached_regions() const {
  std::lock_guard lock(mu_);
  return regions_.size();
}

std::size_t IotlbCache::retired_regions() const {
  std::lock_guard lock(mu_);
  return retired_.size();
}

std::size_t IotlbCache::poisoned_regions() const {
  std::lock_guard lock(mu_);
  return static_cast<std::size_t>(
      std::count_if(regions_.begin(), regions_.end(), [](const Region &r) { return sigbus_guard::poisoned(r.guard); }));
}

} // namespace vb::vduse
