// vduse-bridge-csi: the CSI node plugin (man vduse-bridge-csi(8)). It serves the Identity and Node
// services on kubelet's unix socket until SIGTERM or SIGINT.
#include "common/errors.h"
#include "common/log.h"
#include "csi/csi_options.h"
#include "csi/node_service.h"

#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
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

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    VB_LOG_INFO("signal %d: stopping (devices and mounts stay)", sig);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  });
  server->Wait();
  waiter.join();
  (void)::unlink(options.endpoint_path.c_str());
  return 0;
}
