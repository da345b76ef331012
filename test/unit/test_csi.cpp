// The CSI plugin's parts below gRPC: volume attributes and secrets to a device file, the staged
// volume state file, the mount table parser, the daemon's list, the command line.
#include "config/config.h"
#include "csi/csi_options.h"
#include "csi/device_list.h"
#include "csi/host_mounts.h"
#include "csi/volume_spec.h"
#include "csi/volume_state.h"

#include "test_support.h"

#include <doctest/doctest.h>

#include <map>
#include <set>
#include <string>

using namespace vb::csi;
using Attrs = std::map<std::string, std::string>;

namespace {

std::string error_of(const Attrs &a, const Attrs &secrets = {}) {
  try {
    build_volume_spec("vol", a, secrets, "/run/vduse-bridge/csi/x", false);
  } catch (const VolumeSpecError &e) {
    return e.attribute() + "|" + e.what();
  }
  return "";
}

} // namespace

TEST_CASE("device names follow the volume id: valid, 20 bytes, distinct") {
  const std::string a = device_name_for("pv-1"), b = device_name_for("pv-2");
  CHECK(a.size() == 20);
  CHECK(a.rfind("csi-", 0) == 0);
  CHECK(a != b);
  CHECK(a == device_name_for("pv-1"));
  CHECK(device_name_for("") != device_name_for(std::string(1, '\0')));
  // The start-up sweep removes only devices with such a name: an operator's own are never touched.
  CHECK(is_csi_device_name(a));
  CHECK(is_csi_device_name(device_name_for(std::string(300, 'x'))));
  CHECK_FALSE(is_csi_device_name("csi-data"));
  CHECK_FALSE(is_csi_device_name("csi-0123456789ABCDEF"));
  CHECK_FALSE(is_csi_device_name("vol-0123456789abcdef"));
  CHECK_FALSE(is_csi_device_name(a + "0"));
}

TEST_CASE("volume ids are bounded and printable") {
  CHECK(volume_id_problem("") != "");
  CHECK(volume_id_problem(std::string(kMaxVolumeId + 1, 'a')) != "");
  CHECK(volume_id_problem("a\nb") != "");
  CHECK(volume_id_problem("iscsi/lun 1") == "");
}

TEST_CASE("an nbd volume becomes a one-device file the daemon's parser accepts") {
  const auto spec = build_volume_spec("pv-a",
                                      {{"type", "nbd"},
                                       {"uri", "nbd+unix:///?socket=/run/n.sock"},
                                       {"connections", "2"},
                                       {"queues", "2"},
                                       {"reconnect-timeout", "30s"},
                                       {"csi.storage.k8s.io/pod.name", "ignored"}},
                                      {}, "/run/vduse-bridge/csi/d", false);
  auto check = vb::check_config_text(spec.config, "t");
  REQUIRE(check.config);
  REQUIRE(check.config->devices.size() == 1);
  const auto &d = check.config->devices.front();
  CHECK(d.name == spec.device);
  CHECK(d.serial == spec.device);
  CHECK(d.queues == 2);
  CHECK(d.backend.type() == "nbd");
  CHECK(!d.read_only);
  CHECK(spec.secrets.empty());
}

TEST_CASE("a reader access mode makes the disk read-only, whatever the attribute says") {
  const auto spec =
      build_volume_spec("pv-r", {{"type", "memory"}, {"size", "1M"}, {"read-only", "false"}}, {}, "/run/x", true);
  auto check = vb::check_config_text(spec.config, "t");
  REQUIRE(check.config);
  CHECK(check.config->devices.front().read_only);
}

TEST_CASE("iscsi portals, CHAP user names and secrets go where the configuration wants them") {
  const auto spec =
      build_volume_spec("pv-i",
                        {{"type", "iscsi"},
                         {"uri", "iscsi://127.0.0.1/iqn.2026-12.org.example:t/1"},
                         {"portals", "127.0.0.2:3260, 127.0.0.3:3260"},
                         {"chap-username", "alice"},
                         {"chap-target-username", "target"}},
                        {{"chap-password", "s3cret-pw"}, {"chap-target-password", "other-pw"}}, "/run/v/d", false);
  CHECK(spec.config.find("s3cret-pw") == std::string::npos);
  CHECK(spec.config.find("other-pw") == std::string::npos);
  CHECK(spec.config.find("password-file: \"/run/v/d/chap-password\"") != std::string::npos);
  REQUIRE(spec.secrets.size() == 2);
  auto check = vb::check_config_text(spec.config, "t");
  INFO(spec.config);
  for (const auto &e : check.errors)
    INFO(e.what());
  CHECK(check.config);
}

TEST_CASE("bad attributes are refused naming the attribute") {
  const Attrs nbd = {{"type", "nbd"}, {"uri", "nbd://127.0.0.1"}};
  auto with = [&nbd](const std::string &k, const std::string &v) {
    Attrs a = nbd;
    a[k] = v;
    return a;
  };
  CHECK(error_of({{"uri", "nbd://x"}}).rfind("type|", 0) == 0);
  CHECK(error_of(with("queues", "lots")).rfind("queues|volume attribute 'queues': ", 0) == 0);
  CHECK(error_of(with("queue-size", "3")).rfind("queue-size|", 0) == 0);
  CHECK(error_of(with("name", "x")).rfind("name|", 0) == 0);
  CHECK(error_of(with("serial", "x")).rfind("serial|", 0) == 0);
  CHECK(error_of(with("attach", "vhost-vdpa")).rfind("attach|", 0) == 0);
  CHECK(error_of(with("tls-psk-file", "/etc/shadow")).rfind("tls-psk-file|", 0) == 0);
  CHECK(error_of(with("chap", "x")).rfind("chap|", 0) == 0);
  CHECK(error_of(with("nonsense", "1")).rfind("nonsense|", 0) == 0);
  CHECK(error_of(with("Upper", "1")).find("key") != std::string::npos);
  CHECK(error_of(with("uri", "nbd://x\"\n    evil: 1")).rfind("uri|", 0) == 0);
  CHECK(error_of(with("uri", std::string(kMaxAttributeValue + 1, 'a'))).rfind("uri|", 0) == 0);
  CHECK(error_of({{"type", "iscsi"}, {"uri", "iscsi://h/iqn.2026-12.org.example:t/1"}, {"portals", "a,,b"}})
            .rfind("portals|", 0) == 0);
  Attrs many = nbd;
  for (int i = 0; i < 70; ++i)
    many["k" + std::to_string(i)] = "1";
  CHECK(error_of(many).find("too many") != std::string::npos);
}

TEST_CASE("a value cannot add keys: quotes and backslashes are escaped") {
  // A URI that tries to close its quotes and add a key: it stays one (bad) string.
  const std::string e = error_of({{"type", "nbd"}, {"uri", "nbd://h\" \n"}});
  CHECK(e.rfind("uri|", 0) == 0);
  const auto spec = build_volume_spec("v", {{"type", "file"}, {"path", "/tmp/a\\\"b"}}, {}, "/run/x", false);
  auto check = vb::check_config_text(spec.config, "t");
  REQUIRE(check.config);
  CHECK(spec.config.find("path: \"/tmp/a\\\\\\\"b\"") != std::string::npos);
}

TEST_CASE("secrets: only known keys, bounded, a username needs its password") {
  const Attrs iscsi = {{"type", "iscsi"}, {"uri", "iscsi://127.0.0.1/iqn.2026-12.org.example:t/1"}};
  CHECK(error_of(iscsi, {{"password", "x"}}).rfind("password|", 0) == 0);
  CHECK(error_of(iscsi, {{"chap-password", ""}}).rfind("chap-password|", 0) == 0);
  CHECK(error_of(iscsi, {{"chap-password", std::string(kMaxSecretValue + 1, 'x')}}).rfind("chap-password|", 0) == 0);
  Attrs user = iscsi;
  user["chap-username"] = "alice";
  CHECK(error_of(user).rfind("chap-username|", 0) == 0);
  CHECK(error_of(iscsi, {{"chap-password", "pw"}}).rfind("chap-password|", 0) == 0);
  // A PSK for a URI without TLS: the daemon's parser says so, under the secret's name.
  const std::string e = error_of({{"type", "nbd"}, {"uri", "nbd://127.0.0.1"}}, {{"tls-psk", "alice:00ff"}});
  CHECK(e.rfind("tls-psk|node-stage secret tls-psk: ", 0) == 0);
  CHECK(e.find("alice:00ff") == std::string::npos);
}

TEST_CASE("the staged volume state round-trips and refuses what it did not write") {
  StagedVolume v{"pv-1", "mount", "/var/lib/kubelet/plugins/x/globalmount", "/dev/vda", "ext4"};
  auto back = parse_staged_volume(format_staged_volume(v));
  CHECK(back.volume_id == v.volume_id);
  CHECK(back.access == "mount");
  CHECK(back.staging_path == v.staging_path);
  CHECK(back.device_node == "/dev/vda");
  CHECK(back.fs_type == "ext4");
  const std::string good = format_staged_volume(v);
  CHECK_THROWS(parse_staged_volume(""));
  CHECK_THROWS(parse_staged_volume(good + "access=block\n"));
  CHECK_THROWS(parse_staged_volume(good + "extra=1\n"));
  CHECK_THROWS(parse_staged_volume(good + "no equals sign\n"));
  CHECK_THROWS(parse_staged_volume(std::string(kMaxStateFile + 1, 'a')));
  auto bad = v;
  bad.device_node = "/etc/passwd";
  CHECK_THROWS(parse_staged_volume(format_staged_volume(bad)));
  bad = v;
  bad.staging_path = "/a/../b";
  CHECK_THROWS(parse_staged_volume(format_staged_volume(bad)));
  bad = v;
  bad.fs_type = "btrfs";
  CHECK_THROWS(parse_staged_volume(format_staged_volume(bad)));
  bad = v;
  bad.access = "file";
  CHECK_THROWS(parse_staged_volume(format_staged_volume(bad)));
}

TEST_CASE("state files are written whole and read back, a missing one is none") {
  vb::test::TempDir dir;
  const std::string path = dir.path() + "/staged";
  CHECK(!load_staged_volume(path));
  StagedVolume v{"pv-2", "block", "/stage", "/dev/vdb", ""};
  write_file_atomically(path, format_staged_volume(v), 0600);
  auto back = load_staged_volume(path);
  REQUIRE(back);
  CHECK(back->device_node == "/dev/vdb");
  write_file_atomically(path, "garbage", 0600);
  CHECK_THROWS(load_staged_volume(path));
}

TEST_CASE("mountinfo lines parse, escapes are undone, the topmost mount wins") {
  const std::string text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
                           "40 30 254:0 / /var/lib/kubelet/stage\\040dir rw,relatime shared:1 - ext4 /dev/vda rw\n"
                           "41 40 0:5 /vda /pods/x/dev ro,nosuid master:2 - devtmpfs udev rw\n"
                           "broken line\n"
                           "42 30 254:16 / /var/lib/kubelet/stage\\040dir ro - xfs /dev/vdb rw\n";
  auto m = parse_mountinfo(text);
  REQUIRE(m.size() == 4);
  CHECK(m[1].mount_point == "/var/lib/kubelet/stage dir");
  CHECK(m[1].major == 254);
  CHECK(m[1].fs_type == "ext4");
  CHECK(m[2].root == "/vda");
  CHECK(is_read_only(m[2]));
  CHECK(!is_read_only(m[1]));
  auto top = mount_at(m, "/var/lib/kubelet/stage dir");
  REQUIRE(top);
  CHECK(top->minor == 16);
  CHECK(!mount_at(m, "/nowhere"));
  CHECK(!read_mounts().empty());
}

TEST_CASE("request paths must be absolute, plain and bounded") {
  CHECK(path_problem("/var/lib/kubelet/pods/x") == "");
  CHECK(path_problem("") != "");
  CHECK(path_problem("relative") != "");
  CHECK(path_problem("/a/../etc") != "");
  CHECK(path_problem("/a/./b") != "");
  CHECK(path_problem("/a\nb") != "");
  CHECK(path_problem("/" + std::string(5000, 'a')) != "");
  // One spelling per path: "//" or a trailing "/" would miss the mount at the plain spelling.
  CHECK(path_problem("/a//b") != "");
  CHECK(path_problem("/a/b/") != "");
  CHECK(path_problem("/") != "");
}

TEST_CASE("a disk that cannot be read is never taken for blank, and what is no disk has no serial or claim") {
  CHECK_THROWS_WITH_AS(check_disk_reads("/nonexistent/vd-none"), doctest::Contains("not formatted"),
                       std::runtime_error);
  CHECK_THROWS_AS(probe_filesystem("/nonexistent/vd-none"), std::runtime_error);
  CHECK(block_serial("/nonexistent/vd-none") == "");
  CHECK(block_serial("/dev/null") == ""); // a character device has no block serial
  CHECK(device_claimed("/nonexistent/vd-none") == "");
}

TEST_CASE("commands run without a shell, bounded in time") {
  auto r = run_command({"sh", "-c", "echo out; echo err >&2; exit 3"}, std::chrono::seconds(10));
  CHECK(r.exit_code == 3);
  CHECK(r.output.find("out") != std::string::npos);
  CHECK(r.output.find("err") != std::string::npos);
  auto slow = run_command({"sleep", "30"}, std::chrono::seconds(1));
  CHECK(slow.timed_out);
  auto missing = run_command({"/nonexistent/program"}, std::chrono::seconds(1));
  CHECK(missing.exit_code != 0);
}

TEST_CASE("the daemon's list: name, node and state of each device") {
  const std::string text = "csi-0123456789abcdef  /dev/vda  /dev/disk/by-id/virtio-csi-0123456789abcdef  "
                           "virtio-vdpa  nbd:nbd+unix:///?socket=/s  serving\n"
                           "other  -  -  virtio-vdpa  iscsi:iqn.x  waiting\n"
                           "short line\n"
                           "third  /dev/vdc  -  virtio-vdpa  nbd:x  serving,reconnecting\n";
  auto d = parse_device_list(text);
  REQUIRE(d.size() == 3);
  CHECK(d[0].node == "/dev/vda");
  CHECK(d[0].serving());
  CHECK(d[1].node.empty());
  CHECK(!d[1].serving());
  CHECK(d[2].serving());
  CHECK(find_device(d, "other"));
  CHECK(!find_device(d, "none"));
}

TEST_CASE("the command line: endpoint and node id required, values checked") {
  auto o = parse_csi_options({"--endpoint", "unix:///csi/csi.sock", "--nodeid=n1", "--stage-timeout", "5s"});
  CHECK(o.endpoint_path == "/csi/csi.sock");
  CHECK(o.node_id == "n1");
  CHECK(o.stage_timeout == std::chrono::seconds(5));
  CHECK(o.state_dir == "/run/vduse-bridge/csi");
  CHECK_THROWS_AS(parse_csi_options({"--nodeid", "n"}), std::invalid_argument);
  CHECK_THROWS_AS(parse_csi_options({"--endpoint", "unix:///s"}), std::invalid_argument);
  CHECK_THROWS_AS(parse_csi_options({"--endpoint", "tcp://1.2.3.4:5", "--nodeid", "n"}), std::invalid_argument);
  CHECK_THROWS_AS(parse_csi_options({"--endpoint", "unix:///s", "--nodeid", "n", "--stage-timeout", "0s"}),
                  std::invalid_argument);
  CHECK_THROWS_AS(parse_csi_options({"--endpoint", "unix:///s", "--nodeid", "n", "--bogus"}), std::invalid_argument);
  CHECK(parse_csi_options({"--help"}).help);
  // Backends: nbd and iscsi unless the operator allows more; only known types.
  CHECK(o.backends == std::set<std::string, std::less<>>{"iscsi", "nbd"});
  auto all = parse_csi_options({"--endpoint", "unix:///s", "--nodeid", "n", "--backends", "nbd,iscsi,file,memory"});
  CHECK(all.backends.size() == 4);
  CHECK(parse_csi_options({"--endpoint", "unix:///s", "--nodeid", "n", "--backends=nbd"}).backends.size() == 1);
  for (const char *bad : {"", "nbd,", "nbd,,iscsi", "ceph", "NBD"})
    CHECK_THROWS_AS(parse_csi_options({"--endpoint", "unix:///s", "--nodeid", "n", "--backends", bad}),
                    std::invalid_argument);
  CHECK(parse_csi_options({"--endpoint", "unix:///s", "--nodeid", "n", "--state-dir", "/x/y/"}).state_dir == "/x/y");
}
