#include "csi/device_list.h"

#include <sstream>

namespace vb::csi {

std::vector<ListedDevice> parse_device_list(const std::string &text) {
  std::vector<ListedDevice> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> cols;
    std::string w;
    while (f >> w && cols.size() < 16)
      cols.push_back(w);
    if (cols.size() < 6)
      continue;
    ListedDevice d;
    d.name = cols.front();
    d.node = cols[1] == "-" ? "" : cols[1];
    d.state = cols.back();
    out.push_back(std::move(d));
  }
  return out;
}

std::optional<ListedDevice> find_device(const std::vector<ListedDevice> &devices, const std::string &name) {
  for (const auto &d : devices)
    if (d.name == name)
      return d;
  return std::nullopt;
}

} // namespace vb::csi
