// A backend under test with its event loop and queue 0, and requests run to completion on a
// queue: the setup that the tests of a backend against a real server share.
#pragma once

#include "backend_events.h"
#include "event/event_loop.h"
#include "loop_wait.h"
#include "test_support.h"
#include "vduse-bridge/backend.h"

#include <doctest/doctest.h>

#include <memory>
#include <utility>

namespace vb::test {

// Submits req on q and runs loop until it completes once; returns the completion's error, or
// the errno submit refused it with (the same errno the completion would have given).
inline int run(vb::EventLoop &loop, vb::BackendQueue &q, const vb::Request &req) {
  Result r;
  const int rc = q.submit(req, &Result::on_done, &r);
  if (rc != 0)
    return rc;
  run_until(loop, [&] { return r.calls > 0; });
  CHECK(r.calls == 1);
  return r.error;
}

// A backend made from options and opened with its own events (new_events), then an event loop
// and queue 0 on it. on_resize, if given, is the backend's resize handler from before queue 0 is
// opened. Members are destroyed in reverse order: the queue, the loop, then the backend; a class
// that derives from this one after a base holding the server destroys the server last.
template <typename BackendType> struct OpenedBackend {
  template <typename Options>
  explicit OpenedBackend(const Options &options, RecordingBackendEvents::ResizeHandler on_resize = {})
      : backend(options) {
    backend.open(new_events(backend));
    if (on_resize)
      events_of(backend).set_resize_handler(std::move(on_resize));
    q = backend.open_queue(loop, 0);
  }

  // A request on queue 0, run to completion (see run above).
  int run(const vb::Request &req) { return vb::test::run(loop, *q, req); }

  BackendType backend;
  vb::EventLoop loop;
  std::unique_ptr<vb::BackendQueue> q;
};

} // namespace vb::test
