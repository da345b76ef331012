#!/usr/bin/python3
"""The steps of test/vm/csi/node-plugin.sh (run in the VM, as root, by that script).

usage: node_plugin.py WORK DAEMON PLUGIN ISCSI_URI"""

import hashlib
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "csi"))
import csi_client as c  # noqa: E402
from csi_client import check, expect, pb  # noqa: E402

work, DAEMON, PLUGIN, ISCSI_URI = sys.argv[1:5]
Code = c.grpc.StatusCode
STAGE_TIMEOUT = 20
main_yaml = os.path.join(work, "main.yaml")
state_dir = os.path.join(work, "csi-state")
nbd_img, nbd_sock = os.path.join(work, "nbd.img"), os.path.join(work, "nbd.sock")
procs = {}


def log(msg):
    print(msg, flush=True)


def write_pid(name, pid):
    with open(os.path.join(work, "pids", name), "w") as f:
        f.write(str(pid))


def daemon_list():
    r = subprocess.run([DAEMON, "list"], capture_output=True, text=True, timeout=30)
    return r.stdout


def device_state(device):
    for line in daemon_list().splitlines():
        cols = line.split()
        if cols and cols[0] == device:
            return cols[-1]
    return None


def start_daemon():
    n = len([k for k in procs if k.startswith("daemon")])
    logf = open(os.path.join(work, "daemon.%d.log" % n), "ab")
    p = subprocess.Popen([DAEMON, "--config", main_yaml], stdout=logf, stderr=logf)
    procs["daemon"] = p
    write_pid("daemon", p.pid)
    c.wait_for(lambda: subprocess.run([DAEMON, "list"], capture_output=True).returncode in (0, 3), 60,
               "the daemon answers list")


def start_nbdkit(sock=nbd_sock, img=nbd_img, key="nbdkit", filters=(), params=()):
    if os.path.exists(sock):
        os.unlink(sock)
    logf = open(os.path.join(work, key + ".log"), "ab")
    p = subprocess.Popen(["nbdkit", "-f", "-U", sock, *filters, "file", "file=" + img, *params],
                         stdout=logf, stderr=logf)
    procs[key] = p
    write_pid(key, p.pid)
    c.wait_for(lambda: os.path.exists(sock), 30, "nbdkit listens on " + sock)


def stop(key, sig=signal.SIGTERM, wait=60):
    p = procs.get(key)
    if p and p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def mounts():
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            out[fields[4].replace("\\040", " ")] = fields
    return out


def is_mounted(path):
    return path in mounts()


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def drop_in(device):
    return os.path.join(work, "main.d", device + ".yaml")


def stage_req(vid, path, cap, attrs, secrets=None):
    return pb.NodeStageVolumeRequest(volume_id=vid, staging_target_path=path, volume_capability=cap,
                                     volume_context=attrs, secrets=secrets or {})


def publish_req(vid, stage, target, cap, readonly=False):
    return pb.NodePublishVolumeRequest(volume_id=vid, staging_target_path=stage, target_path=target,
                                       volume_capability=cap, readonly=readonly)


def twice(call, req, what, code=Code.OK):
    """Every call is made twice: the second must find the first's work done."""
    expect(code, call, req, what)
    expect(code, call, req, what + " (again)")


def aligned_block(fill=b"\0"):
    """4 KiB of one byte in page-aligned memory, for O_DIRECT."""
    import mmap
    buf = mmap.mmap(-1, 4096)
    buf.write(fill * 4096)
    return buf


def all_logs():
    text = ""
    for name in os.listdir(work):
        if name.endswith(".log"):
            with open(os.path.join(work, name), errors="replace") as f:
                text += f.read()
    return text


def cleanup():
    for m in sorted((m for m in mounts() if m.startswith(work + "/")), reverse=True):
        subprocess.run(["umount", m], capture_output=True)
    if "plugin" in procs:
        plugin.stop()
    stop("daemon")
    stop("nbdkit")
    stop("late")
    stop("faulty")
    if "holder" in procs:
        procs["holder"].kill()


with open(main_yaml, "w") as f:
    f.write("devices: []\n")
os.makedirs(os.path.join(work, "main.d"), exist_ok=True)
subprocess.run(["truncate", "-s", "128M", nbd_img], check=True)
start_nbdkit()
start_daemon()
plugin = c.Plugin(PLUGIN, os.path.join(work, "csi.sock"), state_dir, "/run/vduse-bridge/control.sock",
                  os.path.join(work, "plugin.log"), extra=("--stage-timeout", "%ds" % STAGE_TIMEOUT))
procs["plugin"] = plugin.proc
write_pid("plugin", plugin.proc.pid)


def restart_plugin(why):
    global N
    plugin.kill()
    plugin.start()
    procs["plugin"] = plugin.proc
    write_pid("plugin", plugin.proc.pid)
    N = plugin.node
    log("ok: plugin SIGKILLed and started again (%s)" % why)


try:
    N = plugin.node
    nbd_attrs = {"type": "nbd", "uri": "nbd+unix:///?socket=" + nbd_sock, "reconnect-timeout": "120s",
                 "resize-poll-interval": "1s", "csi.storage.k8s.io/pod.name": "demo"}

    # ---- 1. a filesystem volume on NBD: stage, publish, the plugin killed between each ----
    vid = "pv-nbd-fs"
    stage_fs, target_fs = os.path.join(work, "mnt-stage-fs"), os.path.join(work, "pods", "a", "mnt-vol")
    cap_fs = c.mount_cap("ext4", ["noatime"])
    t0 = time.time()
    twice(N.NodeStageVolume, stage_req(vid, stage_fs, cap_fs, nbd_attrs), "stage a blank NBD disk as ext4")
    log("ok: staged (mkfs included) in %.1fs" % (time.time() - t0))
    m = mounts().get(stage_fs)
    check(m is not None and "ext4" in m, "the staging path has an ext4 filesystem mounted")
    device = c.device_name_for(vid)
    check(device_state(device) == "serving", "the daemon serves %s (%s)" % (device, device_state(device)))
    check(os.path.exists(drop_in(device)), "the device is a drop-in file (%s): it survives daemon restarts"
          % drop_in(device))
    restart_plugin("between stage and publish")
    check(is_mounted(stage_fs), "the staging mount stayed")
    expect(Code.OK, N.NodeStageVolume, stage_req(vid, stage_fs, cap_fs, nbd_attrs), "stage again after the restart")
    twice(N.NodePublishVolume, publish_req(vid, stage_fs, target_fs, cap_fs), "publish the filesystem")
    check(is_mounted(target_fs), "the target is mounted")
    data = os.urandom(1 << 20)
    with open(os.path.join(target_fs, "data.bin"), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    digest = hashlib.sha256(data).hexdigest()
    restart_plugin("between publish and unpublish")
    check(is_mounted(target_fs) and sha(os.path.join(target_fs, "data.bin")) == digest,
          "the published mount and its data stayed")
    stats = N.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target_fs), timeout=60)
    units = {u.unit: u for u in stats.usage}
    check(pb.VolumeUsage.BYTES in units and units[pb.VolumeUsage.BYTES].total > 100 << 20,
          "stats report bytes (total %d)" % (units[pb.VolumeUsage.BYTES].total if pb.VolumeUsage.BYTES in units else 0))
    check(pb.VolumeUsage.INODES in units and units[pb.VolumeUsage.INODES].total > 0, "stats report inodes")
    check(not stats.volume_condition.abnormal, "the condition is normal (%s)" % stats.volume_condition.message)
    expect(Code.FAILED_PRECONDITION, N.NodeUnstageVolume,
           pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_fs), "unstage while still published")

    # ---- 2. the daemon SIGKILLed under a writer: the writes pause, none fails ----
    chunk = os.path.join(work, "chunk")
    with open(chunk, "wb") as f:
        f.write(os.urandom(256 << 10))
    writer = subprocess.Popen(["sh", "-c", 'i=0; while [ $i -lt 24 ]; do '
                               'dd if="$1" of="$2/w$i" bs=64k conv=fsync status=none || exit 1; '
                               'i=$((i+1)); sleep 0.2; done', "writer", chunk, target_fs])
    time.sleep(1.5)
    stop("daemon", signal.SIGKILL)
    log("ok: daemon SIGKILLed with the writer running")
    time.sleep(3)
    check(writer.poll() in (None, 0), "the writer has not failed with the daemon gone (%s)" % writer.poll())
    stats = N.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target_fs), timeout=60)
    check(stats.volume_condition.abnormal, "the condition is abnormal while the daemon is down (%s)"
          % stats.volume_condition.message)
    start_daemon()
    try:
        rc = writer.wait(timeout=180)
    except subprocess.TimeoutExpired:
        writer.kill()
        rc = "hung"
    check(rc == 0, "the writer finished without an error once the daemon was back (%s)" % rc)
    want = sha(chunk)
    bad = [i for i in range(24) if sha(os.path.join(target_fs, "w%d" % i)) != want]
    check(not bad, "all 24 files written across the restart read back (bad: %s)" % bad)
    c.wait_for(lambda: device_state(device) == "serving", 60, "the device serving after the daemon restart")
    stats = N.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=target_fs), timeout=60)
    check(not stats.volume_condition.abnormal, "the condition is normal again (%s)" % stats.volume_condition.message)

    # ---- 3. online expansion after the export grew (nbdkit restarted on a bigger image) ----
    before = os.statvfs(target_fs)
    stop("nbdkit")
    subprocess.run(["truncate", "-s", "192M", nbd_img], check=True)
    start_nbdkit()
    t0 = time.time()
    r = N.NodeExpandVolume(pb.NodeExpandVolumeRequest(volume_id=vid, volume_path=target_fs,
                                                      capacity_range=pb.CapacityRange(required_bytes=192 << 20)),
                           timeout=180)
    after = os.statvfs(target_fs)
    check(r.capacity_bytes >= 192 << 20, "NodeExpandVolume returns the new size (%d) after %.1fs"
          % (r.capacity_bytes, time.time() - t0))
    check(after.f_blocks * after.f_frsize > before.f_blocks * before.f_frsize + (48 << 20),
          "the mounted filesystem grew (%d -> %d MiB)" % (before.f_blocks * before.f_frsize >> 20,
                                                          after.f_blocks * after.f_frsize >> 20))
    expect(Code.OUT_OF_RANGE, N.NodeExpandVolume,
           pb.NodeExpandVolumeRequest(volume_id=vid, volume_path=target_fs,
                                      capacity_range=pb.CapacityRange(required_bytes=1 << 40)),
           "expand beyond what the backend has", timeout=STAGE_TIMEOUT + 60)

    # ---- 4. unpublish, unstage (each twice), stage again: the data is there ----
    twice(N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target_fs),
          "unpublish the filesystem")
    check(not os.path.exists(target_fs), "the target path is gone")
    twice(N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_fs),
          "unstage the filesystem")
    check(not is_mounted(stage_fs), "the staging path is unmounted")
    check(device_state(device) is None, "the daemon removed the device")
    check(not os.path.exists(drop_in(device)), "its drop-in file is gone")
    check(not os.path.exists(os.path.join(state_dir, device)), "its state directory is gone")
    twice(N.NodeStageVolume, stage_req(vid, stage_fs, cap_fs, nbd_attrs), "stage the volume again")
    twice(N.NodePublishVolume, publish_req(vid, stage_fs, target_fs, cap_fs, readonly=True),
          "publish it read-only")
    check(sha(os.path.join(target_fs, "data.bin")) == digest, "the data written before is there")
    try:
        open(os.path.join(target_fs, "new"), "w").close()
        check(False, "a write to the read-only publish fails")
    except OSError as e:
        check(e.errno == 30, "a write to the read-only publish fails with EROFS (%s)" % e)
    expect(Code.OK, N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target_fs),
           "unpublish")
    expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_fs),
           "unstage")

    # ---- 5. a block volume: the device node bind-mounted ----
    vid = "pv-nbd-block"
    stage_b = os.path.join(work, "mnt-stage-blk")
    target_b, target_ro = os.path.join(work, "pods", "b", "dev"), os.path.join(work, "pods", "c", "dev")
    cap_b = c.block_cap()
    twice(N.NodeStageVolume, stage_req(vid, stage_b, cap_b, nbd_attrs), "stage a block volume")
    twice(N.NodePublishVolume, publish_req(vid, stage_b, target_b, cap_b), "publish the block device")
    check(os.path.exists(target_b) and os.stat(target_b).st_rdev != 0, "the target is the device node")
    pattern = os.urandom(1 << 20)
    fd = os.open(target_b, os.O_WRONLY)
    os.pwrite(fd, pattern, 4 << 20)
    os.fsync(fd)
    os.close(fd)
    expect(Code.FAILED_PRECONDITION, N.NodePublishVolume, publish_req(vid, stage_b, target_ro, cap_b, readonly=True),
           "publish it read-only while it is published read-write")
    expect(Code.FAILED_PRECONDITION, N.NodeUnstageVolume,
           pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_b), "unstage a published block volume")
    expect(Code.OK, N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target_b),
           "unpublish the read-write target")
    twice(N.NodePublishVolume, publish_req(vid, stage_b, target_ro, cap_b, readonly=True), "publish it read-only")
    # The kernel opens a read-only disk for writing and refuses the write (EPERM).
    try:
        fd = os.open(target_ro, os.O_WRONLY | os.O_DIRECT)
        try:
            os.pwrite(fd, aligned_block(), 0)
            wrote = "wrote"
        finally:
            os.close(fd)
    except OSError as e:
        wrote = e.strerror
    check(wrote != "wrote", "a write through the read-only block target fails (%s)" % wrote)
    expect(Code.FAILED_PRECONDITION, N.NodePublishVolume, publish_req(vid, stage_b, target_b, cap_b),
           "publish it read-write while it is published read-only")
    expect(Code.ALREADY_EXISTS, N.NodePublishVolume, publish_req(vid, stage_b, target_ro, cap_b, readonly=False),
           "publish read-write at the target published read-only")
    twice(N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target_ro),
          "unpublish the read-only target")
    twice(N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target_b),
          "unpublish the read-write target (gone already)")
    twice(N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_b),
          "unstage the block volume")
    expect(Code.OK, N.NodeStageVolume, stage_req(vid, stage_b, cap_b, nbd_attrs), "stage the block volume again")
    expect(Code.OK, N.NodePublishVolume, publish_req(vid, stage_b, target_b, cap_b), "publish it again")
    block = aligned_block(b"\xa5")
    try:
        fd = os.open(target_b, os.O_WRONLY | os.O_DIRECT)
        try:
            written = os.pwrite(fd, block, 0)
        finally:
            os.close(fd)
        check(written == len(block), "it is writable again once the read-only publish is gone")
    except OSError as e:
        check(False, "it is writable again once the read-only publish is gone (%s)" % e.strerror)
    with open(target_b, "rb") as f:
        check(f.read(len(block)) == bytes(block), "the block written after the read-only publish reads back")
        f.seek(4 << 20)
        check(f.read(1 << 20) == pattern, "the block volume reads back what was written")
    expect(Code.FAILED_PRECONDITION, N.NodePublishVolume, publish_req(vid, stage_b, target_fs, cap_fs),
           "publish a block-staged volume as a filesystem")
    expect(Code.OK, N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target_b),
           "unpublish")
    expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_b),
           "unstage")

    # ---- 6. iSCSI with CHAP: the password as a node-stage secret ----
    vid = "pv-iscsi"
    stage_i, target_i = os.path.join(work, "mnt-stage-iscsi"), os.path.join(work, "pods", "d", "mnt-vol")
    iscsi_attrs = {"type": "iscsi", "uri": ISCSI_URI, "chap-username": "csi-user",
                   "initiator-name": "iqn.2026-11.org.vduse-bridge.vmtest:initiator", "reconnect-timeout": "60s"}
    expect(Code.INVALID_ARGUMENT, N.NodeStageVolume, stage_req(vid, stage_i, cap_fs, iscsi_attrs),
           "stage with chap-username and no secret", contains="chap-password")
    secret = {"chap-password": "csi-secret-0123"}
    twice(N.NodeStageVolume, stage_req(vid, stage_i, cap_fs, iscsi_attrs, secret), "stage an iSCSI LUN with CHAP")
    idev = c.device_name_for(vid)
    sfile = os.path.join(state_dir, idev, "chap-password")
    check(os.path.exists(sfile) and os.stat(sfile).st_mode & 0o777 == 0o600,
          "the CHAP password is a 0600 file under the state directory")
    expect(Code.OK, N.NodePublishVolume, publish_req(vid, stage_i, target_i, cap_fs), "publish it")
    with open(os.path.join(target_i, "hello"), "w") as f:
        f.write("over iscsi\n")
    expect(Code.OK, N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target_i),
           "unpublish")
    expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_i),
           "unstage")
    check(not os.path.exists(sfile), "the secret file is removed at unstage")

    # ---- 7. bad attributes, and storage that comes up after the stage ----
    expect(Code.INVALID_ARGUMENT, N.NodeStageVolume,
           stage_req("pv-bad", os.path.join(work, "mnt-bad"), cap_fs, {**nbd_attrs, "queues": "0"}),
           "stage with queues 0 (the daemon's parser)", contains="'queues'")
    check(not [line for line in daemon_list().splitlines() if line.startswith(c.device_name_for("pv-bad"))],
          "a refused volume leaves no device")
    late_sock, late_img = os.path.join(work, "late.sock"), os.path.join(work, "late.img")
    late_attrs = {"type": "nbd", "uri": "nbd+unix:///?socket=" + late_sock, "reconnect-timeout": "60s"}
    vid = "pv-late"
    stage_l = os.path.join(work, "mnt-stage-late")
    t0 = time.time()
    expect(Code.UNAVAILABLE, N.NodeStageVolume, stage_req(vid, stage_l, cap_fs, late_attrs),
           "stage while its NBD server is not up", timeout=STAGE_TIMEOUT + 60)
    log("ok: UNAVAILABLE after %.1fs" % (time.time() - t0))
    check(device_state(c.device_name_for(vid)) is not None, "the waiting device is kept for the next stage")
    subprocess.run(["truncate", "-s", "64M", late_img], check=True)
    start_nbdkit(late_sock, late_img, "late")
    expect(Code.OK, N.NodeStageVolume, stage_req(vid, stage_l, cap_fs, late_attrs),
           "stage again once the server is up", timeout=STAGE_TIMEOUT + 60)
    check(is_mounted(stage_l), "it is mounted")
    expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage_l),
           "unstage")
    check(not [line for line in daemon_list().splitlines() if line.startswith("csi-")], "no csi- device is left")

    # ---- 8. a host reboot: /run and every mount gone, the daemon back with its drop-ins ----
    # Volume A (a filesystem, published) moved to another node while this one was down: nothing
    # will unstage it here, so the plugin's start-up sweep removes its device. Volume B's disk is
    # mounted by hand after the boot: kept. A stage of A after the sweep finds its data.
    vid_a, vid_b = "pv-reboot-a", "pv-reboot-b"
    dev_a, dev_b = c.device_name_for(vid_a), c.device_name_for(vid_b)
    stage_a, target_a = os.path.join(work, "mnt-stage-ra"), os.path.join(work, "pods", "e", "mnt-vol")
    stage_rb = os.path.join(work, "mnt-stage-rb")
    expect(Code.OK, N.NodeStageVolume, stage_req(vid_a, stage_a, cap_fs, nbd_attrs), "stage volume A")
    expect(Code.OK, N.NodePublishVolume, publish_req(vid_a, stage_a, target_a, cap_fs), "publish volume A")
    with open(os.path.join(target_a, "before-reboot"), "wb") as f:
        f.write(b"A" * 65536)
        os.fsync(f.fileno())
    b_uri = "nbd+unix:///?socket=" + late_sock
    expect(Code.OK, N.NodeStageVolume, stage_req(vid_b, stage_rb, c.block_cap(), dict(late_attrs, uri=b_uri)),
           "stage volume B (block)")
    plugin.kill()
    for m in (target_a, stage_a):
        subprocess.run(["umount", m], check=True)
    stop("daemon", signal.SIGKILL)
    subprocess.run(["rm", "-rf", state_dir], check=True)
    start_daemon()
    c.wait_for(lambda: device_state(dev_a) == "serving" and device_state(dev_b) == "serving", 60,
               "the daemon serving A and B again from their drop-ins")
    node_b = [line.split()[1] for line in daemon_list().splitlines() if line.startswith(dev_b + " ")][0]
    manual = os.path.join(work, "manual-b")
    open(manual, "w").close()
    subprocess.run(["mount", "--bind", node_b, manual], check=True)
    plugin.start()
    procs["plugin"] = plugin.proc
    write_pid("plugin", plugin.proc.pid)
    N = plugin.node
    # The sweep runs once the daemon answers, beside the serving plugin: give it a while.
    if c.wait_for(lambda: device_state(dev_a) is None, 30, "the sweep removed A's device"):
        check(True, "the sweep removed A's device (no state since the boot, not mounted)")
    check(not os.path.exists(drop_in(dev_a)), "and its drop-in file")

    def plugin_log():
        with open(os.path.join(work, "plugin.log"), errors="replace") as f:
            return f.read()
    if c.wait_for(lambda: "%s has no state" % dev_b in plugin_log(), 30, "the plugin's log says why B is kept"):
        check(True, "the plugin's log says why B is kept")
    check(device_state(dev_b) == "serving", "it kept B's device, mounted at %s" % manual)
    expect(Code.OK, N.NodeStageVolume, stage_req(vid_a, stage_a, cap_fs, nbd_attrs), "stage volume A after the sweep")
    try:
        with open(os.path.join(stage_a, "before-reboot"), "rb") as f:
            check(f.read() == b"A" * 65536, "A's data from before the reboot is there")
    except OSError as e:
        check(False, "A's data from before the reboot is there (%s)" % e.strerror)
    expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid_a, staging_target_path=stage_a),
           "unstage A")
    expect(Code.FAILED_PRECONDITION, N.NodeUnstageVolume,
           pb.NodeUnstageVolumeRequest(volume_id=vid_b, staging_target_path=stage_rb),
           "unstage B while its disk is mounted by hand")
    subprocess.run(["umount", manual], check=True)
    expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid_b, staging_target_path=stage_rb),
           "unstage B (no state left: from the daemon's list)")
    check(not [line for line in daemon_list().splitlines() if line.startswith("csi-")], "no csi- device is left")

    # ---- 9. what the plugin must not trust: blkid's "nothing found", its own records, its mount table ----
    # (a) reads fail while blkid probes: the disk is not taken for blank, and not formatted.
    faulty_sock, faulty_img = os.path.join(work, "faulty.sock"), os.path.join(work, "faulty.img")
    inject = os.path.join(work, "inject-read-errors")
    with open(faulty_img, "wb") as f:
        f.write(os.urandom(64 << 20))  # data no filesystem signature names
    before = sha(faulty_img)
    open(inject, "w").close()
    start_nbdkit(faulty_sock, faulty_img, "faulty", filters=("--filter=error",),
                 params=("error-pread=EIO", "error-pread-rate=100%", "error-pread-file=" + inject))
    vid_f = "pv-faulty"
    stage_f = os.path.join(work, "mnt-stage-faulty")
    faulty_attrs = {"type": "nbd", "uri": "nbd+unix:///?socket=" + faulty_sock, "reconnect-timeout": "60s"}
    got, msg = c.code_of(N.NodeStageVolume, stage_req(vid_f, stage_f, cap_fs, faulty_attrs), timeout=STAGE_TIMEOUT + 60)
    check(got != Code.OK and "not formatted" in msg, "stage a disk whose reads fail: refused (%s: %s)" % (got.name, msg))
    check(sha(faulty_img) == before, "the disk's data is unchanged (no mkfs)")
    check(not is_mounted(stage_f), "nothing is mounted at its staging path")
    os.unlink(inject)
    expect(Code.OK, N.NodeStageVolume, stage_req(vid_f, stage_f, cap_fs, faulty_attrs),
           "stage it again once it reads: blank, so formatted", timeout=STAGE_TIMEOUT + 60)
    # (b) a copy of the staging mount in another mount namespace (private propagation): the
    # plugin's mount table does not show it, but the filesystem is still mounted there.
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "600"])
    procs["holder"] = holder
    time.sleep(1)
    expect(Code.FAILED_PRECONDITION, N.NodeUnstageVolume,
           pb.NodeUnstageVolumeRequest(volume_id=vid_f, staging_target_path=stage_f),
           "unstage while another mount namespace holds its filesystem", contains="in use")
    check(device_state(c.device_name_for(vid_f)) == "serving", "the device is kept")
    holder.kill()
    holder.wait()
    expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid_f, staging_target_path=stage_f),
           "unstage once that namespace is gone")
    # (c) a staged record naming another disk (a node name reused after the device was restarted):
    # the publish follows the device's serial, not the record.
    vid_c, vid_d = "pv-record-c", "pv-record-d"
    dev_c, dev_d = c.device_name_for(vid_c), c.device_name_for(vid_d)
    stage_c, stage_d = os.path.join(work, "mnt-stage-rc"), os.path.join(work, "mnt-stage-rd")
    target_c, target_d = os.path.join(work, "pods", "f", "dev"), os.path.join(work, "pods", "g", "dev")
    expect(Code.OK, N.NodeStageVolume, stage_req(vid_c, stage_c, c.block_cap(), faulty_attrs), "stage volume C (block)")
    expect(Code.OK, N.NodeStageVolume, stage_req(vid_d, stage_d, c.block_cap(), late_attrs), "stage volume D (block)")
    listed = {line.split()[0]: line.split()[1] for line in daemon_list().splitlines() if line.startswith("csi-")}
    node_c, node_d = listed.get(dev_c), listed.get(dev_d)
    record = os.path.join(state_dir, dev_c, "staged")
    with open(record) as f:
        text = f.read()
    with open(record, "w") as f:
        f.write(text.replace("device-node=" + node_c, "device-node=" + node_d))
    expect(Code.OK, N.NodePublishVolume, publish_req(vid_c, stage_c, target_c, c.block_cap()),
           "publish C with its record naming D's disk")
    check(os.stat(target_c).st_rdev == os.stat(node_c).st_rdev,
          "C's target is C's disk %s, not D's %s" % (node_c, node_d))
    with open(record) as f:
        check("device-node=" + node_c in f.read(), "and the record is corrected")
    # (d) a read-only block publish retried after its flag was lost: the flag is set again.
    expect(Code.OK, N.NodePublishVolume, publish_req(vid_d, stage_d, target_d, c.block_cap(), readonly=True),
           "publish D read-only")
    subprocess.run(["blockdev", "--setrw", node_d], check=True)
    expect(Code.OK, N.NodePublishVolume, publish_req(vid_d, stage_d, target_d, c.block_cap(), readonly=True),
           "publish D read-only again (kubelet's retry)")
    ro = subprocess.run(["blockdev", "--getro", node_d], capture_output=True, text=True).stdout.strip()
    check(ro == "1", "D's disk is read-only again (%s)" % ro)
    # (e) the same volume id staged again with other attributes: not adopted.
    expect(Code.ALREADY_EXISTS, N.NodeStageVolume,
           stage_req(vid_d, stage_d, c.block_cap(), dict(late_attrs, uri="nbd+unix:///?socket=" + nbd_sock)),
           "stage D again naming another export while it is staged")
    for vid, stage, target in ((vid_c, stage_c, target_c), (vid_d, stage_d, target_d)):
        expect(Code.OK, N.NodeUnpublishVolume, pb.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target),
               "unpublish " + vid)
        expect(Code.OK, N.NodeUnstageVolume, pb.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=stage),
               "unstage " + vid)
    check(not [line for line in daemon_list().splitlines() if line.startswith("csi-")], "no csi- device is left")

    logs = all_logs()
    check("csi-secret-0123" not in logs, "the CHAP password is in no log")
finally:
    cleanup()

if c.failures:
    log("%d check(s) failed:" % len(c.failures))
    for f in c.failures:
        log("  " + f)
    for name in ("plugin.log", "daemon.0.log", "daemon.1.log"):
        p = os.path.join(work, name)
        if os.path.exists(p):
            log("---- %s ----" % name)
            with open(p, errors="replace") as f:
                log("".join(f.readlines()[-40:]))
    sys.exit(1)
log("all checks passed")
