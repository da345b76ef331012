#include "backend_factory.h"

#include <stdexcept>
#include <string>

namespace vb {

std::unique_ptr<Backend> make_backend(const DeviceConfig &device) {
  const BackendConfig &b = device.backend;
  if (b.module == nullptr || !b.options)
    throw std::logic_error("device " + device.name + " has no parsed backend");
  return b.module->create(*b.options, backend_device(device));
}

std::string discover(const std::string &uri) {
  const std::string_view scheme = std::string_view(uri).substr(0, uri.find("://"));
  std::string known;
  for (const BackendModule *m : backend_modules())
    for (const auto s : m->discover_schemes) {
      if (s == scheme && m->discover)
        return m->discover(uri);
      known += (known.empty() ? "" : ", ") + std::string(s) + "://";
    }
  throw std::invalid_argument("--discover: cannot discover '" + uri + "': expected a URI starting with " + known);
}

} // namespace vb
