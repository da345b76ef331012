// The daemon proper: one export per configured device, served until SIGTERM/SIGINT.
#pragma once

#include <string>

#include "config/config.h"

namespace vb {

// Runs in the foreground on the calling thread (the control loop). Returns the exit status:
// 0 after a clean shutdown, 1 if a device could not be set up (the others are torn down).
struct Options;
int run_daemon(const Config &config, const Options &options);

} // namespace vb
