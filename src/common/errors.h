// errno values as text, safe from any thread.
#pragma once

#include <string>

namespace vb {

// "No such file or directory"; never null, thread-safe (unlike strerror's locale buffer).
const char *errno_text(int err) noexcept;

// "what: <errno text>" for exceptions thrown from setup code.
std::string errno_message(const std::string &what, int err);

} // namespace vb
