"""A CSI test client: stubs generated from the plugin's own src/csi/csi.proto (grpc_tools, from
Debian's python3-grpc-tools) into a temporary directory, and small helpers for the calls."""

import os
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src", "csi")


def load_stubs():
    """Returns (csi_pb2, csi_pb2_grpc)."""
    out = tempfile.mkdtemp(prefix="csi-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["protoc", "--proto_path=" + SRC, "--python_out=" + out, "--grpc_python_out=" + out]
    if os.path.isdir(include):
        args.append("--proto_path=" + include)
    if os.path.isdir("/usr/include/google/protobuf"):
        args.append("--proto_path=/usr/include")
    args.append(os.path.join(SRC, "csi.proto"))
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on csi.proto")
    sys.path.insert(0, out)
    import csi_pb2  # noqa: E402 (generated above)
    import csi_pb2_grpc  # noqa: E402
    return csi_pb2, csi_pb2_grpc


pb, pb_grpc = load_stubs()


class Plugin:
    """A vduse-bridge-csi process and stubs connected to it."""

    def __init__(self, binary, endpoint, state_dir, control_socket, log, extra=()):
        self.binary, self.endpoint = binary, endpoint
        self.state_dir, self.control_socket, self.log, self.extra = state_dir, control_socket, log, extra
        self.proc = None
        self.start()

    def start(self):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "--endpoint", "unix://" + self.endpoint, "--nodeid", "test-node",
                                      "--state-dir", self.state_dir, "--control-socket", self.control_socket,
                                      *self.extra], stdout=logf, stderr=logf)
        self.channel = grpc.insecure_channel("unix://" + self.endpoint)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.identity = pb_grpc.IdentityStub(self.channel)
        self.node = pb_grpc.NodeStub(self.channel)

    def kill(self):
        """SIGKILL, as a crashed or OOM-killed plugin pod."""
        self.channel.close()
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def block_cap(mode=None):
    mode = mode or pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def mount_cap(fs_type="ext4", flags=(), mode=None):
    mode = mode or pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags)),
                               access_mode=pb.VolumeCapability.AccessMode(mode=mode))


def code_of(call, *args, **kwargs):
    """Runs a call: grpc.StatusCode.OK, or the error's code; and the message."""
    try:
        call(*args, timeout=kwargs.pop("timeout", 120), **kwargs)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def device_name_for(volume_id):
    """The plugin's device name for a volume id: csi- and FNV-1a-64 of it, in hex."""
    h = 14695981039346656037
    for b in volume_id.encode():
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return "csi-%016x" % h


failures = []


def check(cond, what):
    print(("ok: " if cond else "FAIL: ") + what, flush=True)
    if not cond:
        failures.append(what)


def expect(code, call, request, what, contains=None, **kwargs):
    """Checks that call(request) ends with code (and its message holds contains)."""
    got, msg = code_of(call, request, **kwargs)
    ok = got == code and (contains is None or contains in msg)
    check(ok, "%s: %s%s" % (what, code.name, "" if ok else " (got %s: %s)" % (got.name, msg)))
    return msg


def wait_for(fn, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if fn():
            return True
        time.sleep(0.2)
    check(False, what)
    return False
