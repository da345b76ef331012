// backend.type: file: its keys and their checks, and the backend it makes.
#include "file/file_backend.h"
#include "file/file_options.h"

#include "common/secret_file.h"
#include "common/small_file.h"

#include <sys/stat.h>

namespace vb {
namespace {

void apply_direct(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                  FileBackendOptions &out) {
  using D = FileBackendOptions::Direct;
  static constexpr std::array<std::pair<std::string_view, D>, 3> choices{{
      {"auto", D::automatic},
      {"on", D::on},
      {"off", D::off},
  }};
  // "on"/"off" are YAML 1.1 booleans: a plain on/off reaches here as the text "on"/"off" (yaml-cpp
  // keeps scalars as written), which is what this key means.
  out.direct = check.choice(v, choices);
}

void apply_queue_depth(const ConfigChecker &check, const ConfigValue &v, const BackendDevice & /*device*/,
                       FileBackendOptions &out) {
  out.queue_depth = check.count(v, 1, 4096);
}

constexpr std::array<BackendKey<FileBackendOptions>, 4> keys{{
    // Only the form: the file is opened when the device starts, which names a missing one.
    {"path", true, &apply_absolute_path<FileBackendOptions, &FileBackendOptions::path>},
    {"direct", false, &apply_direct},
    {"queue-depth", false, &apply_queue_depth},
    {"resize-poll-interval", false, &apply_duration<FileBackendOptions, &FileBackendOptions::resize_poll_interval>},
}};
constexpr auto key_names = names_of(keys);

std::unique_ptr<BackendOptions> parse(const BackendKeys &in) {
  auto out = std::make_unique<FileBackendOptions>();
  apply_backend_keys(in, file_backend_module, keys, *out);
  out->read_only = in.device.read_only; // a read-only disk opens its file read-only
  return out;
}

// The directory must be there; the file itself may be created later (a warning).
void preflight(const BackendOptions &options, std::vector<PreflightFinding> &out) {
  const auto &o = dynamic_cast<const FileBackendOptions &>(options);
  using S = PreflightFinding::Severity;
  if (const std::string problem = parent_directory_problem(o.path); !problem.empty()) {
    out.push_back({S::error, "path", o.path + ": " + problem});
    return;
  }
  struct stat st {};
  if (::stat(o.path.c_str(), &st) != 0)
    out.push_back({S::warning, "path", o.path + " does not exist yet (the device cannot start until it does)"});
  else if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    out.push_back(
        {S::error, "path", o.path + " is " + file_type_name(st.st_mode) + ", not a regular file or a block device"});
}

std::unique_ptr<Backend> create(const BackendOptions &options, const BackendDevice & /*device*/) {
  return std::make_unique<FileBackend>(dynamic_cast<const FileBackendOptions &>(options));
}

} // namespace

const BackendModule file_backend_module{
    .type = "file",
    .article = "a",
    .keys = key_names,
    .parse = &parse,
    .create = &create,
    .preflight = &preflight,
};

} // namespace vb
