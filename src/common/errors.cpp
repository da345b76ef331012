#include "common/errors.h"

#include <cstring>

namespace vb {

const char *errno_text(int err) noexcept {
  const char *text = strerrordesc_np(err);
  return text ? text : "Unknown error";
}

std::string errno_message(const std::string &what, int err) { return what + ": " + errno_text(err); }

} // namespace vb
