// The daemon's `list` reply, as the plugin reads it: name, device node and state of each device.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace vb::csi {

struct ListedDevice {
  std::string name;
  std::string node;  // /dev/vdX, or "" while it has none
  std::string state; // serving, waiting, starting, stopping; "serving,reconnecting"
  bool serving() const { return state == "serving" || state.rfind("serving,", 0) == 0; }
};

// One device per line: NAME NODE BY-ID ATTACH BACKEND STATE, "-" for an empty column. Lines
// that do not have six columns are skipped.
std::vector<ListedDevice> parse_device_list(const std::string &text);
std::optional<ListedDevice> find_device(const std::vector<ListedDevice> &devices, const std::string &name);

} // namespace vb::csi
