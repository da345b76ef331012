// backend.type: memory: its one key, and the disk it makes.
#include "memory/memory_backend.h"
#include "memory/memory_options.h"

namespace vb {
namespace {

constexpr std::uint64_t max_memory_size = 1ULL << 46; // 64 TiB: beyond that a memory disk is a typo
constexpr unsigned memory_block_size = 512;           // its own when the device gives none

void apply_size(const ConfigChecker &check, const ConfigValue &v, const BackendDevice &device, MemoryOptions &out) {
  const std::uint64_t size = check.size(v);
  if (size == 0)
    check.expected(v, "a size above 0");
  if (size > max_memory_size)
    check.expected(v, "a size of at most 64 TiB");
  const unsigned block = device.logical_block_size != 0 ? device.logical_block_size : memory_block_size;
  if (size % block != 0)
    check.expected(v, "a multiple of the logical block size (" + std::to_string(block) + " bytes)",
                   " (" + std::to_string(size) + " bytes)");
  out.size = size;
}

constexpr std::array<BackendKey<MemoryOptions>, 1> keys{{
    {"size", true, &apply_size},
}};
constexpr auto key_names = names_of(keys);

std::unique_ptr<BackendOptions> parse(const BackendKeys &in) {
  auto out = std::make_unique<MemoryOptions>();
  apply_backend_keys(in, memory_backend_module, keys, *out);
  return out;
}

std::unique_ptr<Backend> create(const BackendOptions &options, const BackendDevice &device) {
  const auto &o = dynamic_cast<const MemoryOptions &>(options);
  // Contents in /dev/shm, so that the disk survives a daemon restart as a tmpfs would.
  return std::make_unique<MemoryBackend>(o.size,
                                         device.logical_block_size ? device.logical_block_size : memory_block_size,
                                         std::string(kMemoryDiskDir) + "/" + device.name + ".mem");
}

} // namespace

const BackendModule memory_backend_module{
    .type = "memory",
    .article = "a",
    .keys = key_names,
    .parse = &parse,
    .create = &create,
};

} // namespace vb
