#include "vduse-bridge/backend_module.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace vb {

bool refuse_unknown_backend_keys(const BackendKeys &in, const BackendModule &module,
                                 std::span<const std::string_view> names) {
  std::vector<std::string_view> all{"type"};
  all.insert(all.end(), names.begin(), names.end());
  static constexpr std::array<ConfigKeyPlace, 1> elsewhere{{{"at the device level", config_device_keys}}};
  bool ok = true;
  for (const auto &v : in.values) {
    if (std::find(all.begin(), all.end(), v.name) != all.end())
      continue;
    ok = in.check.attempt([&] {
      in.check.fail(v.key_at, v.key,
                    "expected " + std::string(module.article) + " " + std::string(module.type) + " backend key (" +
                        config_list(all) + "), got " + config_quoted(v.name, '\'') +
                        config_key_hint(v.name, all, elsewhere));
    }) && ok;
  }
  return ok;
}

void check_outside_file(const std::string &source, const std::string &key, const std::string &text,
                        void (*check)(const ConfigChecker &, const ConfigValue &)) {
  ConfigValue v;
  v.name = v.key = key;
  v.kind = ConfigValue::Kind::scalar;
  v.tag = "?";
  v.text = text;
  try {
    check(ConfigChecker(source), v);
  } catch (const ConfigError &e) {
    throw std::invalid_argument(e.what());
  }
}

const ConfigValue *find_backend_key(const BackendKeys &in, std::string_view name) {
  for (const auto &v : in.values)
    if (v.name == name)
      return &v;
  return nullptr;
}

} // namespace vb
