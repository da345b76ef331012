// Events for backends opened by tests: `backend.open(new_events(backend))` gives each opened
// backend its own RecordingBackendEvents, kept until the test process ends (events must outlive
// the backend), and `events_of(backend)` finds them again to read its health or set a resize
// handler.
#pragma once

#include "vduse-bridge/backend.h"

#include <map>
#include <memory>
#include <vector>

namespace vb::test {

struct OpenedBackends {
  std::vector<std::unique_ptr<RecordingBackendEvents>> all; // never freed before exit
  std::map<const Backend *, RecordingBackendEvents *> latest;
};

inline OpenedBackends &opened_backends() {
  static OpenedBackends opened;
  return opened;
}

// A new backend at the address of one that is gone gets new events.
inline RecordingBackendEvents &new_events(const Backend &backend) {
  auto &o = opened_backends();
  o.all.push_back(std::make_unique<RecordingBackendEvents>());
  o.latest[&backend] = o.all.back().get();
  return *o.all.back();
}

inline RecordingBackendEvents &events_of(const Backend &backend) { return *opened_backends().latest.at(&backend); }

} // namespace vb::test
