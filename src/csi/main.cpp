// vduse-bridge-csi: the CSI node plugin (man vduse-bridge-csi(8)). It serves the Identity and Node
// services on kubelet's unix socket until SIGTERM or SIGINT.
#include "common/errors.h"
#include "common/log.h"
#include "csi/csi_options.h"
#include "csi/node_service.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

int main(int argc, char **argv) {
  vb::csi::CsiOptions options;
  try {
    options = vb::csi::parse_csi_options({argv + 1, argv + argc});
  } catch (const std::exception &e) {
    (void)std::fprintf(stderr, "vduse-bridge-csi: %s\n", e.what());
    return 2;
  }
  if (options.help) {
    (void)std::fputs(vb::csi::csi_usage(), stdout);
    return 0;
  }
  if (options.version) {
    (void)std::printf("vduse-bridge-csi %s (CSI v1, driver %s)\n", VDUSE_BRIDGE_VERSION, vb::csi::kDriverName);
    return 0;
  }

  // Signals are taken by one thread (sigwait), so gRPC's threads never see them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  (void)::signal(SIGPIPE, SIG_IGN);

  // A socket left by a plugin that was killed is in the way of bind(); nothing else may be.
  struct stat st {};
  if (::lstat(options.endpoint_path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      (void)std::fprintf(stderr, "vduse-bridge-csi: --endpoint %s exists and is not a socket\n",
                         options.endpoint_path.c_str());
      return 1;
    }
    // Stale only if nobody answers on it: a plugin still serving there is not taken over.
    const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, options.endpoint_path.c_str(), options.endpoint_path.size() + 1);
    const bool live = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0;
    if (probe >= 0)
      ::close(probe);
    if (live) {
      (void)std::fprintf(stderr, "vduse-bridge-csi: --endpoint %s: another plugin is serving there\n",
                         options.endpoint_path.c_str());
      return 1;
    }
    (void)::unlink(options.endpoint_path.c_str());
  }

  vb::csi::IdentityService identity(options);
  vb::csi::NodeService node(options);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix://" + options.endpoint_path, grpc::InsecureServerCredentials());
  builder.RegisterService(&identity);
  builder.RegisterService(&node);
  builder.SetMaxReceiveMessageSize(1 << 20); // requests are small: bound what a client can make us hold
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    (void)std::fprintf(stderr, "vduse-bridge-csi: cannot listen on %s\n", options.endpoint_path.c_str());
    return 1;
  }
  (void)::chmod(options.endpoint_path.c_str(), 0660);
  VB_LOG_INFO("vduse-bridge-csi %s: driver %s, node %s, serving CSI on %s (daemon %s, state in %s)",
              VDUSE_BRIDGE_VERSION, vb::csi::kDriverName, options.node_id.c_str(), options.endpoint_path.c_str(),
              options.control_socket.c_str(), options.state_dir.c_str());

  // The start-up sweep, once the daemon answers (it may come up after the plugin). Calls wait
  // for it while it runs, so none races it.
  std::mutex sweep_mutex;
  std::condition_variable sweep_stop;
  bool stopping = false;
  std::thread sweeper([&] {
    std::unique_lock lock(sweep_mutex);
    bool told = false;
    while (!stopping) {
      lock.unlock();
      const int removed = node.remove_stale_devices();
      lock.lock();
      if (removed > 0)
        VB_LOG_INFO("removed %d device(s) staged before the host restarted", removed);
      if (removed >= 0)
        break;
      if (!told)
        VB_LOG_WARN("the daemon does not answer at %s yet: devices left from before a reboot are looked for "
                    "once it does",
                    options.control_socket.c_str());
      told = true;
      sweep_stop.wait_for(lock, std::chrono::seconds(2));
    }
  });

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    VB_LOG_INFO("signal %d: stopping (devices and mounts stay)", sig);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
  server->Wait();
  waiter.join();
  {
    std::lock_guard lock(sweep_mutex);
    stopping = true;
  }
  sweep_stop.notify_all();
  sweeper.join();
  (void)::unlink(options.endpoint_path.c_str());
  return 0;
}
