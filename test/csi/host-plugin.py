#!/usr/bin/python3
"""vduse-bridge-csi on the host, without VDUSE: the Identity service, the codes of requests that
are refused before any device exists, the daemon's absence, and concurrent calls for one volume.
The daemon here is a double on the control socket (it answers `list` and holds `add`); the real
daemon and kernel are in the VM group test/vm/csi.

usage: host-plugin.py BUILD_DIR"""

import os
import subprocess
import socket
import sys
import tempfile
import threading
import time

try:
    import grpc  # noqa: F401
    import grpc_tools  # noqa: F401
except ImportError as e:
    print("VB_SKIP: python3-grpcio / python3-grpc-tools not installed (%s)" % e)
    sys.exit(77)

import csi_client as c
from csi_client import check, expect, pb

build = sys.argv[1]
binary = os.path.join(build, "src", "csi", "vduse-bridge-csi")
work = tempfile.mkdtemp(prefix="csi-host-")
control = os.path.join(work, "control.sock")


class FakeDaemon(threading.Thread):
    """Answers `list` with nothing and holds every `add` for hold seconds, then refuses it."""

    def __init__(self, path, hold):
        super().__init__(daemon=True)
        self.hold, self.adds = hold, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)

    def run(self):
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        line = b""
        while not line.endswith(b"\n"):
            got = conn.recv(4096)
            if not got:
                return
            line += got
        cmd = line.decode().strip()
        if cmd.startswith("add "):
            self.adds.append(cmd[4:])
            time.sleep(self.hold)
            conn.sendall(b"error\nthe double refuses every device\n")
        else:
            conn.sendall(b"ok\n")
        conn.close()


# --- the daemon not running ---
plugin = c.Plugin(binary, os.path.join(work, "csi.sock"), os.path.join(work, "state"), control,
                  os.path.join(work, "plugin.log"), extra=("--stage-timeout", "5s"))
n = plugin.node
info = plugin.identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=10)
check(info.name == "blk.vduse-bridge.org", "GetPluginInfo names the driver blk.vduse-bridge.org (%s)" % info.name)
check(info.vendor_version != "", "GetPluginInfo has a version (%s)" % info.vendor_version)
caps = plugin.identity.GetPluginCapabilities(pb.GetPluginCapabilitiesRequest(), timeout=10)
check(not any(x.HasField("service") and x.service.type == x.service.CONTROLLER_SERVICE for x in caps.capabilities),
      "no CONTROLLER_SERVICE capability (statically provisioned volumes)")
probe = plugin.identity.Probe(pb.ProbeRequest(), timeout=10)
# Ready while no daemon listens: a liveness restart of the plugin would not bring the daemon back.
check(probe.HasField("ready") and probe.ready.value, "Probe: ready (alive) while no daemon listens")
ncaps = n.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest(), timeout=10)
types = sorted(x.rpc.type for x in ncaps.capabilities)
R = pb.NodeServiceCapability.RPC
check(types == sorted([R.STAGE_UNSTAGE_VOLUME, R.GET_VOLUME_STATS, R.EXPAND_VOLUME, R.VOLUME_CONDITION]),
      "NodeGetCapabilities: stage/unstage, stats, expand, condition (%s)" % types)
check(n.NodeGetInfo(pb.NodeGetInfoRequest(), timeout=10).node_id == "test-node", "NodeGetInfo: the --nodeid")

stage_dir = os.path.join(work, "staging")
good = {"type": "nbd", "uri": "nbd+unix:///?socket=/run/none.sock"}
S = pb.NodeStageVolumeRequest
I = c.grpc.StatusCode
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(staging_target_path=stage_dir, volume_capability=c.block_cap(),
                                                 volume_context=good), "stage without a volume id")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(volume_id="v1", volume_capability=c.block_cap(),
                                                 volume_context=good), "stage without a staging path")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(volume_id="v1", staging_target_path="relative/x",
                                                 volume_capability=c.block_cap(), volume_context=good),
       "stage with a relative staging path")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(volume_id="v1", staging_target_path=stage_dir + "//x",
                                                 volume_capability=c.block_cap(), volume_context=good),
       "stage with a staging path holding '//'")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(volume_id="v1", staging_target_path=stage_dir + "/",
                                                 volume_capability=c.block_cap(), volume_context=good),
       "stage with a staging path ending in '/'")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(volume_id="v1", staging_target_path=stage_dir,
                                                 volume_context=good), "stage without a capability")
# file and memory would give whoever writes PersistentVolumes the host's files and memory.
for t in ("file", "memory"):
    expect(I.INVALID_ARGUMENT, n.NodeStageVolume,
           S(volume_id="v1", staging_target_path=stage_dir, volume_capability=c.block_cap(),
             volume_context={"type": t, "path": "/var/lib/kubelet/pki/kubelet.key", "size": "1G"}),
           "stage a %s volume without --backends allowing it" % t, contains="--backends iscsi,nbd")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(volume_id="v1", staging_target_path=stage_dir,
                                                 volume_capability=c.mount_cap("btrfs"), volume_context=good),
       "stage with fs_type btrfs", contains="fs_type")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume,
       S(volume_id="v1", staging_target_path=stage_dir, volume_context=good,
         volume_capability=c.mount_cap(mode=pb.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER)),
       "stage a filesystem for MULTI_NODE_MULTI_WRITER")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume,
       S(volume_id="v1", staging_target_path=stage_dir, volume_context=good,
         volume_capability=c.mount_cap(flags=["noatime,suid"])), "stage with a mount flag holding a comma")
for attrs, name in [({"uri": "nbd://x"}, "'type'"),
                    ({**good, "queues": "many"}, "'queues'"),
                    ({**good, "connections": "0"}, "'connections'"),
                    ({**good, "name": "mine"}, "'name'"),
                    ({**good, "tls-psk-file": "/etc/shadow"}, "'tls-psk-file'"),
                    ({**good, "bogus-key": "1"}, "'bogus-key'"),
                    ({**good, "uri": "nbd://x\n  evil: 1"}, "'uri'"),
                    ({"type": "iscsi", "uri": "iscsi://127.0.0.1/iqn.2026-12.org.example:t/1",
                      "chap-username": "u"}, "'chap-password'")]:
    expect(I.INVALID_ARGUMENT, n.NodeStageVolume,
           S(volume_id="v1", staging_target_path=stage_dir, volume_capability=c.block_cap(), volume_context=attrs),
           "stage with bad attributes %s names %s" % (sorted(attrs), name), contains=name)
msg = expect(I.INVALID_ARGUMENT, n.NodeStageVolume,
             S(volume_id="v1", staging_target_path=stage_dir, volume_capability=c.block_cap(),
               volume_context=good, secrets={"wrong-secret": "hunter2-secret-value"}),
             "stage with an unknown secret key", contains="wrong-secret")
check("hunter2" not in msg, "the error does not carry the secret's value")
expect(I.UNAVAILABLE, n.NodeStageVolume,
       S(volume_id="v1", staging_target_path=stage_dir, volume_capability=c.block_cap(),
         volume_context={**good, "csi.storage.k8s.io/pod.name": "ignored"}), "stage while no daemon listens")
P = pb.NodePublishVolumeRequest
expect(I.FAILED_PRECONDITION, n.NodePublishVolume,
       P(volume_id="never-staged", staging_target_path=stage_dir, target_path=os.path.join(work, "t"),
         volume_capability=c.block_cap()), "publish a volume never staged")
expect(I.INVALID_ARGUMENT, n.NodePublishVolume,
       P(volume_id="v1", staging_target_path=stage_dir, volume_capability=c.block_cap()), "publish without target")
expect(I.NOT_FOUND, n.NodeGetVolumeStats, pb.NodeGetVolumeStatsRequest(volume_id="v1", volume_path=work),
       "stats for a path that is not a mounted volume")
expect(I.NOT_FOUND, n.NodeExpandVolume, pb.NodeExpandVolumeRequest(volume_id="v1", volume_path=work),
       "expand a volume not staged")
expect(I.OK, n.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id="v1", target_path=os.path.join(work, "t")),
       "unpublish what was never published")
expect(I.UNAVAILABLE, n.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id="v1", staging_target_path=stage_dir),
       "unstage while no daemon listens")

# --- a daemon that holds `add`: a second call for the same volume meanwhile is ABORTED ---
fake = FakeDaemon(control, hold=3)
fake.start()
check(plugin.identity.Probe(pb.ProbeRequest(), timeout=10).ready.value, "Probe: ready with the daemon answering")
req = S(volume_id="v2", staging_target_path=stage_dir, volume_capability=c.block_cap(),
        volume_context={"type": "nbd", "uri": "nbds+unix:///?socket=/run/none.sock"},
        secrets={"tls-psk": "alice:0123456789abcdef"})
first = {}
t = threading.Thread(target=lambda: first.update(r=c.code_of(n.NodeStageVolume, req)))
t.start()
c.wait_for(lambda: fake.adds, 10, "the plugin asked the daemon to add the device")
expect(I.ABORTED, n.NodeStageVolume, req, "a second stage of the volume while the first runs")
expect(I.ABORTED, n.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id="v2", staging_target_path=stage_dir),
       "an unstage of the volume while its stage runs")
expect(I.INVALID_ARGUMENT, n.NodeStageVolume, S(volume_id="v3", staging_target_path=stage_dir,
                                                 volume_capability=c.block_cap(), volume_context={}),
       "another volume is not held up meanwhile", timeout=2)
t.join()
check(first["r"][0] == I.FAILED_PRECONDITION and "refuses" in first["r"][1],
      "the daemon's refusal comes back as FAILED_PRECONDITION with its words (%s)" % (first["r"],))
if fake.adds:
    cfg = fake.adds[0]
    mode = os.stat(os.path.join(os.path.dirname(cfg), "tls-psk")).st_mode & 0o777
    check(mode == 0o600, "the TLS PSK secret is written 0600 (%o)" % mode)
    text = open(cfg).read()
    check("0123456789abcdef" not in text and "tls-psk-file:" in text,
          "the device file names the secret's path, not its value")
log = open(os.path.join(work, "plugin.log")).read()
check("0123456789abcdef" not in log and "hunter2" not in log, "no secret value in the plugin's log")
# A second plugin on the socket of one that serves leaves it alone (only a stale socket is replaced).
second = subprocess.run([binary, "--endpoint", "unix://" + os.path.join(work, "csi.sock"), "--nodeid", "x",
                         "--state-dir", os.path.join(work, "state2"), "--control-socket", control],
                        capture_output=True, text=True, timeout=30)
check(second.returncode == 1 and "another plugin is serving" in second.stderr,
      "a second plugin on a live endpoint exits 1 (%d: %s)" % (second.returncode, second.stderr.strip()))
check(plugin.identity.Probe(pb.ProbeRequest(), timeout=10).ready.value, "and the first one still serves")
check(plugin.stop() == 0, "SIGTERM stops the plugin with exit 0")
check(not os.path.exists(os.path.join(work, "csi.sock")), "the socket is removed at exit")

if c.failures:
    print("%d check(s) failed" % len(c.failures))
    sys.exit(1)
print("all checks passed")
