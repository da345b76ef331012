#include "config/config.h"
#include "file/file_options.h"
#include "iscsi/iscsi_options.h"
#include "memory/memory_options.h"
#include "nbd/nbd_options.h"

#include "test_support.h"

#include <algorithm>
#include <chrono>
#include <doctest/doctest.h>
#include <fstream>
#include <string>
#include <sys/stat.h>
#include <typeinfo>
#include <unistd.h>

using vb::BackendConfig;
using vb::Config;
using vb::ConfigError;
using vb::DeviceConfig;
using vb::parse_config;

namespace {

// The message of the ConfigError that parsing throws, or a marker that none was thrown.
std::string error_of(const std::string &yaml, const std::string &source = "test.yaml") {
  try {
    parse_config(yaml, source);
  } catch (const ConfigError &e) {
    return e.what();
  }
  return "(no error thrown)";
}

void write_file(const std::string &path, const std::string &text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// A valid device; bad cases append one line (line 6) or replace a part.
const std::string head = "devices:\n"           // 1
                         "  - name: disk0\n"    // 2
                         "    backend:\n"       // 3
                         "      type: memory\n" // 4
                         "      size: 1G\n";    // 5

// A valid nbd device with the given URI on line 5; bad cases append from line 6.
std::string nbd_with(const std::string &uri) {
  return "devices:\n"         // 1
         "  - name: remote\n" // 2
         "    backend:\n"     // 3
         "      type: nbd\n"  // 4
         "      uri: " +
         uri + "\n"; // 5
}

const std::string nbd_head = nbd_with("nbd://server/export");
const std::string nbds_head = nbd_with("nbds://server/export");

} // namespace

TEST_CASE("a minimal device gets every default") {
  const Config c = parse_config("devices:\n"
                                "  - name: disk0\n"
                                "    backend: {type: memory, size: 64M}\n",
                                "min.yaml");
  CHECK(c.path == "min.yaml");
  REQUIRE(c.devices.size() == 1);
  const DeviceConfig &d = c.devices[0];
  CHECK(d.name == "disk0");
  CHECK(d.backend.type() == "memory");
  CHECK(d.backend.as<vb::MemoryOptions>().size == 64ULL << 20);
  CHECK(d.queues == 1);
  CHECK(d.queue_size == 256);
  CHECK(d.logical_block_size == 0); // absent: the backend's (512 for memory)
  CHECK_FALSE(d.read_only);
  CHECK(d.serial == "disk0");
  CHECK(d.attach == DeviceConfig::Attach::virtio_vdpa);
  CHECK(d.line == 2);
}

TEST_CASE("a device with every key set") {
  const Config c = parse_config("# comment\n"
                                "devices:\n"
                                "  - name: Big_disk-1\n"
                                "    backend:\n"
                                "      type: memory\n"
                                "      size: 2GiB\n"
                                "    queues: 8\n"
                                "    queue-size: 1024\n"
                                "    logical-block-size: 4096\n"
                                "    read-only: true\n"
                                "    serial: \"SN 0001/A\"\n"
                                "    attach: vhost-vdpa\n",
                                "full.yaml");
  REQUIRE(c.devices.size() == 1);
  const DeviceConfig &d = c.devices[0];
  CHECK(d.name == "Big_disk-1");
  CHECK(d.backend.as<vb::MemoryOptions>().size == 2ULL << 30);
  CHECK(d.queues == 8);
  CHECK(d.queue_size == 1024);
  CHECK(d.logical_block_size == 4096);
  CHECK(d.read_only);
  CHECK(d.serial == "SN 0001/A");
  CHECK(d.attach == DeviceConfig::Attach::vhost_vdpa);
  CHECK(d.line == 3);
}

TEST_CASE("several devices keep their order and their own settings") {
  const Config c = parse_config("devices:\n"
                                "  - name: a\n"
                                "    backend: {type: memory, size: 1M}\n"
                                "    attach: none\n"
                                "    read-only: FALSE\n"
                                "  - name: a-very-long-device-name-of-30b\n"
                                "    backend:\n"
                                "      type: memory\n"
                                "      size: 1073741824\n"
                                "    queue-size: 2\n"
                                "    logical-block-size: 1024\n"
                                "  - name: '0123'\n"
                                "    serial: ''\n"
                                "    backend: {type: \"memory\", size: \"4K\"}\n"
                                "    queues: !!int 64\n"
                                "    read-only: True\n",
                                "several.yaml");
  REQUIRE(c.devices.size() == 3);
  CHECK(c.devices[0].name == "a");
  CHECK(c.devices[0].attach == DeviceConfig::Attach::none);
  CHECK_FALSE(c.devices[0].read_only);
  CHECK(c.devices[0].line == 2);
  CHECK(c.devices[1].name == "a-very-long-device-name-of-30b");
  CHECK(c.devices[1].serial == "a-very-long-device-n"); // the name cut to 20 bytes
  CHECK(c.devices[1].backend.as<vb::MemoryOptions>().size == 1ULL << 30);
  CHECK(c.devices[1].queue_size == 2);
  CHECK(c.devices[1].logical_block_size == 1024);
  CHECK(c.devices[1].line == 6);
  CHECK(c.devices[2].name == "0123");
  CHECK(c.devices[2].serial.empty()); // an explicit empty serial stays empty
  CHECK(c.devices[2].backend.as<vb::MemoryOptions>().size == 4096);
  CHECK(c.devices[2].queues == 64);
  CHECK(c.devices[2].read_only);
  CHECK(c.devices[2].line == 12);
}

TEST_CASE("an nbd device with every key set") {
  const Config c = parse_config("devices:\n"
                                "  - name: remote0\n"
                                "    backend:\n"
                                "      type: nbd\n"
                                "      uri: nbds://alice@nbd.example.com:10809/vm%20disk\n"
                                "      connections: 16\n"
                                "      tls-psk-file: /etc/vduse-bridge/psk.keys\n"
                                "      reconnect-timeout: 2m\n"
                                "      request-timeout: \"500ms\"\n"
                                "    queues: 4\n"
                                "    logical-block-size: 4096\n",
                                "nbd.yaml");
  REQUIRE(c.devices.size() == 1);
  const DeviceConfig &d = c.devices[0];
  CHECK(d.name == "remote0");
  CHECK(d.backend.type() == "nbd");
  CHECK(d.backend.as<vb::NbdOptions>().uri == "nbds://alice@nbd.example.com:10809/vm%20disk"); // as written
  CHECK(d.backend.as<vb::NbdOptions>().connections == 16);
  CHECK(d.backend.as<vb::NbdOptions>().tls_certificates.empty());
  CHECK(d.backend.as<vb::NbdOptions>().tls_psk_file == "/etc/vduse-bridge/psk.keys");
  CHECK(d.backend.as<vb::NbdOptions>().reconnect_timeout == std::chrono::minutes(2));
  CHECK(d.backend.as<vb::NbdOptions>().request_timeout == std::chrono::milliseconds(500));
  CHECK_THROWS_AS((void)d.backend.as<vb::MemoryOptions>(), std::bad_cast); // nbd options only
  CHECK(d.queues == 4);
  CHECK(d.logical_block_size == 4096);
}

TEST_CASE("an nbd device gets the nbd defaults and the server's block size") {
  const Config c = parse_config(nbd_head, "nbd.yaml");
  REQUIRE(c.devices.size() == 1);
  const DeviceConfig &d = c.devices[0];
  CHECK(d.backend.type() == "nbd");
  CHECK(d.backend.as<vb::NbdOptions>().uri == "nbd://server/export");
  CHECK(d.backend.as<vb::NbdOptions>().connections == 1);
  CHECK(d.backend.as<vb::NbdOptions>().tls_certificates.empty());
  CHECK(d.backend.as<vb::NbdOptions>().tls_psk_file.empty());
  CHECK(d.backend.as<vb::NbdOptions>().reconnect_timeout == std::chrono::seconds(60));
  CHECK(d.backend.as<vb::NbdOptions>().request_timeout == std::chrono::milliseconds(0)); // item 7: off by default
  CHECK(d.logical_block_size == 0);
  CHECK(d.serial == "remote");
}

TEST_CASE("every NBD URI form is accepted") {
  const std::string good[] = {
      "nbd://server",
      "nbd://server:10809/export",
      "nbd://[::1]:10809/export",
      "nbd://alice@server/export", // a user name without a password is fine
      "nbds://server/export",
      "nbd+unix:///export?socket=/run/nbd.sock",
      "nbd+unix:///?socket=/run/nbd.sock",
      "nbds+unix://alice@/export?socket=/run/nbd.sock&tls-hostname=server",
      "nbd+vsock://2:10809/export",
      "nbds+vsock:///",
      "'nbd://server/export?socket-x=1'",
      "\"nbd://server/export\"",
  };
  for (const auto &uri : good) {
    CAPTURE(uri);
    const std::string msg = error_of(nbd_with(uri));
    CAPTURE(msg);
    CHECK(msg == "(no error thrown)");
  }
}

TEST_CASE("nbd: TLS keys with an nbds scheme, zero timeouts") {
  const Config certs = parse_config(nbds_head + "      tls-certificates: /etc/vduse-bridge/pki\n", "t.yaml");
  CHECK(certs.devices[0].backend.as<vb::NbdOptions>().tls_certificates == "/etc/vduse-bridge/pki");
  CHECK(certs.devices[0].backend.as<vb::NbdOptions>().tls_psk_file.empty());

  const Config psk = parse_config(
      nbd_with("nbds+unix:///e?socket=/run/nbd.sock") + "      tls-psk-file: '/etc/vduse-bridge/psk keys'\n", "t.yaml");
  CHECK(psk.devices[0].backend.as<vb::NbdOptions>().tls_psk_file == "/etc/vduse-bridge/psk keys");

  const Config zero = parse_config(nbd_head + "      reconnect-timeout: 0\n      request-timeout: 0\n", "t.yaml");
  CHECK(zero.devices[0].backend.as<vb::NbdOptions>().reconnect_timeout == std::chrono::milliseconds(0));
  CHECK(zero.devices[0].backend.as<vb::NbdOptions>().request_timeout == std::chrono::milliseconds(0));
}

TEST_CASE("a password in an NBD URI is refused without being shown") {
  const std::string msg = error_of(nbd_with("nbds://alice:s3cret@server/export"));
  CHECK(msg ==
        "test.yaml:5:12: devices[0].backend.uri: expected a URI without a password, got one in "
        "'nbds://alice:***@server/export': secrets come from files, never from the URI; put the PSK in tls-psk-file "
        "and use an nbds URI (the user name may stay: nbds://alice@host/export)");
  CHECK(msg.find("s3cret") == std::string::npos);
  // Checked before anything that would echo the URI.
  const std::string spaced = error_of(nbd_with("\"http://u:top secret@h/\""));
  CHECK(spaced.find("without a password") != std::string::npos);
  CHECK(spaced.find("secret@") == std::string::npos);
}

// The shipped example creates nothing: "devices: []" and every device commented out. Returns
// the example with "devices:" and the device whose first line is "  # - name: NAME" uncommented.
static std::string example_with(const std::string &name) {
  std::string text = vb::test::read_file(VB_SOURCE_DIR "/etc/vduse-bridge/vduse-bridge.yaml");
  const std::string empty = "\ndevices: []\n";
  const auto list = text.find(empty);
  REQUIRE(list != std::string::npos);
  text.replace(list, empty.size(), "\ndevices:\n");
  auto at = text.find("\n  # - name: " + name + " ");
  if (at == std::string::npos)
    at = text.find("\n  # - name: " + name + "\n");
  REQUIRE(at != std::string::npos);
  // Its lines, from the marker to the first that is not "  # " plus indentation, lose the "# ".
  for (++at; at < text.size();) {
    const auto end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    if (line.rfind("  # ", 0) != 0 || (line.size() > 4 && line[4] != '-' && line[4] != ' '))
      break;
    text.erase(at + 2, 2);
    at = text.find('\n', at);
    at = at == std::string::npos ? text.size() : at + 1;
  }
  return text;
}

TEST_CASE("the example's commented-out disk0 is valid once uncommented") {
  const std::string text = example_with("disk0");
  CAPTURE(text);
  const Config c = parse_config(text, "vduse-bridge.yaml");
  REQUIRE(c.devices.size() == 1);
  const DeviceConfig &d = c.devices[0];
  CHECK(d.name == "disk0");
  CHECK(d.backend.type() == "memory");
  CHECK(d.backend.as<vb::MemoryOptions>().size == 1ULL << 30);
  CHECK(d.attach == DeviceConfig::Attach::virtio_vdpa);
  CHECK(d.serial == "disk0");
}

TEST_CASE("the example's commented-out nbd device is valid once uncommented") {
  const std::string text = example_with("remote0");
  CAPTURE(text);
  const Config c = parse_config(text, "vduse-bridge.yaml");
  REQUIRE(c.devices.size() == 1);
  const DeviceConfig &d = c.devices[0];
  CHECK(d.name == "remote0");
  CHECK(d.backend.type() == "nbd");
  CHECK(d.backend.as<vb::NbdOptions>().uri == "nbd+unix:///export?socket=/run/nbd.sock");
  CHECK(d.backend.as<vb::NbdOptions>().connections == 4);
  CHECK(d.backend.as<vb::NbdOptions>().reconnect_timeout == std::chrono::seconds(60));
  CHECK(d.backend.as<vb::NbdOptions>().request_timeout == std::chrono::milliseconds(0));
  CHECK(d.queues == 4);
  CHECK(d.logical_block_size == 0);
}

TEST_CASE("the EXAMPLE of vduse-bridge.yaml(5) is valid") {
  const std::string man = vb::test::read_file(VB_SOURCE_DIR "/man/vduse-bridge.yaml.5");
  const auto section = man.find("\n.SH EXAMPLE\n");
  REQUIRE(section != std::string::npos);
  const auto start = man.find("\n.nf\n", section);
  const auto end = man.find("\n.fi\n", section);
  REQUIRE(start != std::string::npos);
  REQUIRE(end != std::string::npos);
  std::string yaml;
  for (std::size_t i = start + 5; i < end + 1; ++i) // roff's "\-" is a plain '-' here
    if (!(man[i] == '\\' && i + 1 < end && man[i + 1] == '-'))
      yaml += man[i];
  CAPTURE(yaml);
  const Config c = parse_config(yaml, "vduse-bridge.yaml.5");
  REQUIRE(c.devices.size() == 5);
  CHECK(c.devices[4].backend.type() == "iscsi");
  CHECK(c.devices[4].backend.as<vb::IscsiOptions>().chap_password_file == "/etc/vduse-bridge/chap.secret");
  CHECK(c.devices[4].backend.as<vb::IscsiOptions>().request_timeout ==
        std::chrono::milliseconds(0)); // item 7: off by default
  CHECK(c.devices[4].queues == 4);
  CHECK(c.devices[2].backend.type() == "nbd");
  CHECK(c.devices[2].backend.as<vb::NbdOptions>().connections == 4);
  CHECK(c.devices[3].backend.as<vb::NbdOptions>().tls_psk_file == "/etc/vduse-bridge/psk.keys");
  CHECK(c.devices[3].backend.as<vb::NbdOptions>().reconnect_timeout == std::chrono::minutes(5));
  CHECK(c.devices[3].logical_block_size == 4096);
}

TEST_CASE("the error quoted in the example's comment is the one the parser gives") {
  std::string text = example_with("disk0"); // the quoted error is that of disk0 uncommented
  const std::string intro = "for instance\n#   ";
  const auto start = text.find(intro);
  REQUIRE(start != std::string::npos);
  const auto end = text.find('\n', start + intro.size());
  const std::string quoted = text.substr(start + intro.size(), end - start - intro.size());
  const auto queues = text.find("\n    queues: 1 ");
  REQUIRE(queues != std::string::npos);
  text[queues + 13] = '0';
  CHECK(error_of(text, "vduse-bridge.yaml") == quoted);
}

TEST_CASE("bad files name the file, line, key and what was expected") {
  struct Case {
    std::string what;
    std::string yaml;
    int line;
    const char *key; // "" when the error is about the file as a whole
    std::string fragment;
  };
  const Case cases[] = {
      // The file as a whole.
      {"syntax error", "devices: [\n  - name: x\n", 2, "", "invalid YAML: illegal block entry"},
      {"bad indentation", head + "    queues: 1\n   serial: x\n", 7, "", "invalid YAML: end of sequence not found"},
      {"tab indentation", head + "\tqueues: 1\n", 6, "", "invalid YAML: illegal tab when looking for indentation"},
      {"empty file", "", 1, "", "expected a map with the key 'devices', got an empty file"},
      {"only comments", "# nothing\n\n", 1, "", "got an empty file"},
      {"two documents", head + "---\n" + head, 7, "", "expected one YAML document, got a second one"},
      {"top level a sequence", "- name: disk0\n", 1, "", "expected a map with the key 'devices', got a sequence"},
      {"top level a scalar", "disk0\n", 1, "", "got 'disk0'"},
      {"unknown top-level key", head + "device:\n", 6, "device", "expected a top-level key (devices), got 'device'"},
      {"a key that is not a scalar", "[a]: 1\n", 1, "", "expected a key name, got a sequence"},
      {"devices missing", "{}\n", 1, "devices", "expected a sequence of devices, got nothing (the key is missing)"},
      {"devices empty value", "devices:\n", 1, "devices", "expected a sequence of devices, got an empty value"},
      {"devices a scalar", "devices: disk0\n", 1, "devices", "expected a sequence of devices, got 'disk0'"},
      {"device a scalar", "devices:\n  - disk0\n", 2, "devices[0]", "expected a map of device keys"},
      {"device empty", head + "  - ~\n", 6, "devices[1]",
       "expected a map of device keys (name, backend, ...), got an empty value"},
      // Keys of a device.
      {"unknown device key", head + "    colour: blue\n", 6, "devices[0].colour",
       "expected a device key (name, backend, queues, queue-size, logical-block-size, read-only, serial, attach, "
       "control-timeout, busy-poll-us), "
       "got 'colour'"},
      {"near miss of a key", head + "    queue_size: 64\n", 6, "devices[0].queue_size",
       "got 'queue_size' (did you mean 'queue-size'?)"},
      {"key with a control character", head + "    \"a\\nb\": 1\n", 6, "devices[0].a\\x0ab", "got 'a\\x0ab'"},
      {"key given twice", head + "    queues: 2\n    queues: 4\n", 7, "devices[0].queues",
       "expected each key once in a map, got it again (first on line 6)"},
      {"backend given twice", head + "    backend: {type: memory, size: 1G}\n", 6, "devices[0].backend",
       "got it again (first on line 3)"},
      {"name missing", "devices:\n  - backend: {type: memory, size: 1G}\n", 2, "devices[0].name",
       "expected a name of 1 to 64 letters, digits, '_' or '-', got nothing (the key is missing)"},
      {"name with a space", "devices:\n  - name: my disk\n    backend: {type: memory, size: 1G}\n", 2,
       "devices[0].name", "letters, digits, '_' or '-', got 'my disk'"},
      {"name with a slash", "devices:\n  - name: ../x\n    backend: {type: memory, size: 1G}\n", 2, "devices[0].name",
       "got '../x'"},
      {"name empty", "devices:\n  - name: ''\n    backend: {type: memory, size: 1G}\n", 2, "devices[0].name",
       "got \"\""},
      {"name too long", "devices:\n  - name: " + std::string(65, 'n') + "\n    backend: {type: memory, size: 1G}\n", 2,
       "devices[0].name", "(65 bytes)"},
      {"name a map", "devices:\n  - name: {a: b}\n    backend: {type: memory, size: 1G}\n", 2, "devices[0].name",
       "got a map"},
      {"same name twice", head + "  - name: disk0\n    backend: {type: memory, size: 1G}\n", 6, "devices[1].name",
       "expected a name no other device has, got 'disk0' (also the name of the device on line 2)"},
      // Numbers.
      {"queues 0", head + "    queues: 0\n", 6, "devices[0].queues", "expected an integer from 1 to 64, got '0'"},
      {"queues negative", head + "    queues: -1\n", 6, "devices[0].queues", "from 1 to 64, got '-1'"},
      {"queues 65", head + "    queues: 65\n", 6, "devices[0].queues", "from 1 to 64, got '65'"},
      {"queues with junk", head + "    queues: 2x\n", 6, "devices[0].queues", "from 1 to 64, got '2x'"},
      {"queues a fraction", head + "    queues: 1.5\n", 6, "devices[0].queues", "got '1.5'"},
      {"queues quoted", head + "    queues: \"2\"\n", 6, "devices[0].queues",
       "expected an integer from 1 to 64 (without quotes), got \"2\""},
      {"queues huge", head + "    queues: 99999999999999999999999\n", 6, "devices[0].queues",
       "got '99999999999999999999999'"},
      {"queues empty", head + "    queues:\n    serial: x\n", 6, "devices[0].queues", "got an empty value"},
      {"queue-size 300", head + "    queue-size: 300\n", 6, "devices[0].queue-size",
       "expected a power of two from 2 to 1024, got '300'"},
      {"queue-size 0", head + "    queue-size: 0\n", 6, "devices[0].queue-size", "got '0'"},
      {"queue-size 1", head + "    queue-size: 1\n", 6, "devices[0].queue-size", "got '1'"},
      {"queue-size 2048", head + "    queue-size: 2048\n", 6, "devices[0].queue-size", "got '2048'"},
      {"block size 256", head + "    logical-block-size: 256\n", 6, "devices[0].logical-block-size",
       "expected a power of two from 512 to 4096, got '256'"},
      {"block size 1000", head + "    logical-block-size: 1000\n", 6, "devices[0].logical-block-size", "got '1000'"},
      {"block size 8192", head + "    logical-block-size: 8192\n", 6, "devices[0].logical-block-size", "got '8192'"},
      // Booleans, strings, choices.
      {"read-only maybe", head + "    read-only: maybe\n", 6, "devices[0].read-only",
       "expected true or false, got 'maybe'"},
      {"read-only yes (YAML 1.1)", head + "    read-only: yes\n", 6, "devices[0].read-only", "got 'yes'"},
      {"read-only quoted", head + "    read-only: 'true'\n", 6, "devices[0].read-only",
       "expected true or false (without quotes), got \"true\""},
      {"serial too long", head + "    serial: 123456789012345678901\n", 6, "devices[0].serial",
       "expected at most 20 bytes of printable ASCII, got '123456789012345678901' (21 bytes)"},
      {"serial far too long", head + "    serial: " + std::string(60, 's') + "\n", 6, "devices[0].serial",
       "got '" + std::string(40, 's') + "...' (60 bytes)"},
      {"serial counts bytes",
       head + "    serial: \"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3"
              "\xa9\xc3\xa9\xc3\xa9\"\n",
       6, "devices[0].serial", "(22 bytes)"},
      {"serial not ASCII",
       head + "    serial: \"d\xc3\xaf"
              "sk\"\n",
       6, "devices[0].serial", "printable ASCII, got \"d\\xc3\\xafsk\""},
      {"serial with a control character", head + "    serial: \"a\\tb\"\n", 6, "devices[0].serial", "got \"a\\x09b\""},
      {"serial with DEL", head + "    serial: \"a\\x7fb\"\n", 6, "devices[0].serial", "got \"a\\x7fb\""},
      {"serial a sequence", head + "    serial: [a]\n", 6, "devices[0].serial", "got a sequence"},
      {"attach misspelt", head + "    attach: vhost\n", 6, "devices[0].attach",
       "expected virtio-vdpa, vhost-vdpa or none, got 'vhost'"},
      // The backend.
      {"backend missing", "devices:\n  - name: disk0\n", 2, "devices[0].backend",
       "expected a map with the key 'type', got nothing (the key is missing)"},
      {"backend a scalar", "devices:\n  - name: disk0\n    backend: memory\n", 3, "devices[0].backend",
       "expected a map with the key 'type', got 'memory'"},
      {"backend type missing", "devices:\n  - name: disk0\n    backend:\n      size: 1G\n", 4,
       "devices[0].backend.type",
       "expected a backend type (memory, nbd, iscsi, file), got nothing (the key is missing)"},
      {"backend type unknown", "devices:\n  - name: disk0\n    backend:\n      type: rbd\n", 4,
       "devices[0].backend.type", "expected a backend type (memory, nbd, iscsi, file), got 'rbd'"},
      {"iscsi uri missing", "devices:\n  - name: disk0\n    backend:\n      type: iscsi\n", 4, "devices[0].backend.uri",
       "expected an iSCSI URI such as iscsi://host[:port]/iqn.2026-11.org.example:disk0/1, got nothing (the key is "
       "missing)"},
      {"memory size missing", "devices:\n  - name: disk0\n    backend:\n      type: memory\n", 4,
       "devices[0].backend.size", "expected a size such as 512, 64K, 1G or 1GiB, got nothing (the key is missing)"},
      {"memory size malformed", "devices:\n  - name: disk0\n    backend:\n      type: memory\n      size: big\n", 5,
       "devices[0].backend.size", "expected a size such as 512, 64K, 1G or 1GiB, got 'big'"},
      {"memory size a fraction", "devices:\n  - name: disk0\n    backend:\n      type: memory\n      size: 1.5G\n", 5,
       "devices[0].backend.size", "expected a size unit of K, M, G, T"},
      {"memory size unit unknown", "devices:\n  - name: disk0\n    backend:\n      type: memory\n      size: 1P\n", 5,
       "devices[0].backend.size", "expected a size unit of K, M, G, T (or KiB, MiB, GiB, TiB), got 'P'"},
      {"memory size zero", "devices:\n  - name: disk0\n    backend:\n      type: memory\n      size: 0\n", 5,
       "devices[0].backend.size", "expected a size above 0, got '0'"},
      {"memory size too big", "devices:\n  - name: disk0\n    backend:\n      type: memory\n      size: 65T\n", 5,
       "devices[0].backend.size", "expected a size of at most 64 TiB, got '65T'"},
      {"memory size not whole blocks",
       "devices:\n  - name: disk0\n    logical-block-size: 4096\n    backend:\n      type: memory\n      size: 6K\n", 6,
       "devices[0].backend.size", "expected a multiple of the logical block size (4096 bytes), got '6K' (6144 bytes)"},
      {"memory size not whole default blocks",
       "devices:\n  - name: disk0\n    backend:\n      type: memory\n      size: 1000\n", 5, "devices[0].backend.size",
       "expected a multiple of the logical block size (512 bytes), got '1000' (1000 bytes)"},
      {"memory size a sequence", "devices:\n  - name: disk0\n    backend:\n      type: memory\n      size: [1G]\n", 5,
       "devices[0].backend.size", "got a sequence"},
      {"key of another backend", head + "      uri: nbd://server/export\n", 6, "devices[0].backend.uri",
       "expected a memory backend key (type, size), got 'uri'"},
      {"backend key given twice", head + "      size: 2G\n", 6, "devices[0].backend.size",
       "got it again (first on line 5)"},
      {"nbd key for memory", head + "      connections: 4\n", 6, "devices[0].backend.connections",
       "expected a memory backend key (type, size), got 'connections'"},
      // The nbd backend.
      {"nbd uri missing", "devices:\n  - name: remote\n    backend:\n      type: nbd\n", 4, "devices[0].backend.uri",
       "expected an NBD URI such as nbd://host/export or nbd+unix:///export?socket=/run/nbd.sock, got nothing (the "
       "key is missing)"},
      {"nbd uri empty", nbd_with("''"), 5, "devices[0].backend.uri", "expected an NBD URI such as"},
      {"nbd uri a sequence", nbd_with("[nbd://server/export]"), 5, "devices[0].backend.uri", "got a sequence"},
      {"nbd uri without a scheme", nbd_with("server:10809"), 5, "devices[0].backend.uri",
       "expected an NBD URI such as nbd://host/export or nbd+unix:///export?socket=/run/nbd.sock, got 'server:10809'"},
      {"nbd uri unknown scheme", nbd_with("http://server/export"), 5, "devices[0].backend.uri",
       "expected a URI scheme of nbd, nbds, nbd+unix, nbds+unix, nbd+vsock, nbds+vsock, got 'http' in "
       "'http://server/export'"},
      {"nbd uri scheme in capitals", nbd_with("NBD://server/export"), 5, "devices[0].backend.uri", "got 'NBD'"},
      {"nbd uri with a space", nbd_with("\"nbd://server/my export\""), 5, "devices[0].backend.uri",
       "expected a URI without spaces, control characters or non-ASCII bytes (percent-encode them)"},
      {"nbd uri with a password", nbd_with("nbd://user:secret@server/"), 5, "devices[0].backend.uri",
       "expected a URI without a password, got one in 'nbd://user:***@server/': secrets come from files"},
      {"nbd uri with an empty password", nbd_with("nbd://user:@server/"), 5, "devices[0].backend.uri",
       "got one in 'nbd://user:***@server/'"},
      {"nbd+unix without socket", nbd_with("nbd+unix:///export"), 5, "devices[0].backend.uri",
       "expected a socket= query parameter naming the server's socket in an nbd+unix URI "
       "(nbd+unix:///export?socket=/run/nbd.sock), got 'nbd+unix:///export'"},
      {"nbds+unix with an empty socket", nbd_with("nbds+unix:///export?socket="), 5, "devices[0].backend.uri",
       "expected a socket= query parameter naming the server's socket in an nbds+unix URI"},
      {"tls-psk-file in the uri", nbd_with("nbds://s/e?tls-psk-file=/etc/psk"), 5, "devices[0].backend.uri",
       "expected a URI without a tls-psk-file query parameter, got 'nbds://s/e?tls-psk-file=/etc/psk': paths and "
       "secrets come from the configuration; name the file with the backend key tls-psk-file instead"},
      {"tls-psk-file percent-encoded in the uri", nbd_with("nbds+unix:///e?socket=/s&TLS%2dPSK%2DFILE=/etc/psk"), 5,
       "devices[0].backend.uri", "expected a URI without a tls-psk-file query parameter"},
      {"tls-certificates in the uri", nbd_with("nbds://server/export?tls-certificates=/etc/pki"), 5,
       "devices[0].backend.uri", "the backend key tls-certificates instead"},
      {"tls-certificates with plain nbd", nbd_head + "      tls-certificates: /etc/vduse-bridge/pki\n", 6,
       "devices[0].backend.tls-certificates",
       "expected a TLS URI scheme (nbds, nbds+unix or nbds+vsock) for this key, got 'nbd' in uri (line 5): without "
       "TLS the key would be ignored"},
      {"tls-psk-file with plain nbd+unix",
       nbd_with("nbd+unix:///e?socket=/run/nbd.sock") + "      tls-psk-file: /etc/vduse-bridge/psk.keys\n", 6,
       "devices[0].backend.tls-psk-file",
       "expected a TLS URI scheme (nbds, nbds+unix or nbds+vsock) for this key, "
       "got 'nbd+unix'"},
      {"both tls keys",
       nbds_head + "      tls-certificates: /etc/vduse-bridge/pki\n      tls-psk-file: /etc/vduse-bridge/psk.keys\n", 7,
       "devices[0].backend.tls-psk-file",
       "expected tls-certificates or tls-psk-file, not both, got both (tls-certificates on line 6)"},
      {"both tls keys, psk first",
       nbds_head + "      tls-psk-file: /etc/vduse-bridge/psk.keys\n      tls-certificates: /etc/vduse-bridge/pki\n", 7,
       "devices[0].backend.tls-certificates", "not both, got both (tls-psk-file on line 6)"},
      {"tls-certificates relative", nbds_head + "      tls-certificates: pki\n", 6,
       "devices[0].backend.tls-certificates", "expected an absolute path (starting with '/'), got 'pki'"},
      {"tls-psk-file relative", nbds_head + "      tls-psk-file: ./psk.keys\n", 6, "devices[0].backend.tls-psk-file",
       "expected an absolute path (starting with '/'), got './psk.keys'"},
      {"tls-psk-file empty", nbds_head + "      tls-psk-file: ''\n", 6, "devices[0].backend.tls-psk-file",
       "expected an absolute path (starting with '/'), got \"\""},
      {"tls-psk-file no value", nbds_head + "      tls-psk-file:\n", 6, "devices[0].backend.tls-psk-file",
       "got an empty value"},
      {"tls-psk-file with a control character", nbds_head + "      tls-psk-file: \"/etc/a\\tb\"\n", 6,
       "devices[0].backend.tls-psk-file", "expected a path without control characters, got \"/etc/a\\x09b\""},
      {"connections 0", nbd_head + "      connections: 0\n", 6, "devices[0].backend.connections",
       "expected an integer from 1 to 16, got '0'"},
      {"connections 17", nbd_head + "      connections: 17\n", 6, "devices[0].backend.connections",
       "expected an integer from 1 to 16, got '17'"},
      {"connections quoted", nbd_head + "      connections: \"4\"\n", 6, "devices[0].backend.connections",
       "expected an integer from 1 to 16 (without quotes), got \"4\""},
      {"reconnect-timeout without a unit", nbd_head + "      reconnect-timeout: 60\n", 6,
       "devices[0].backend.reconnect-timeout", "expected a duration with a unit (ms, s, m, h), got '60'"},
      {"reconnect-timeout negative", nbd_head + "      reconnect-timeout: -1s\n", 6,
       "devices[0].backend.reconnect-timeout", "expected a duration such as 500ms, 30s, 2m or 1h, got '-1s'"},
      {"request-timeout unknown unit", nbd_head + "      request-timeout: 5d\n", 6,
       "devices[0].backend.request-timeout", "expected a duration unit of ms, s, m or h, got 'd'"},
      {"request-timeout a fraction", nbd_head + "      request-timeout: 1.5s\n", 6,
       "devices[0].backend.request-timeout", "expected a duration unit of ms, s, m or h, got '.5s'"},
      {"request-timeout a map", nbd_head + "      request-timeout: {s: 30}\n", 6, "devices[0].backend.request-timeout",
       "expected a duration such as 500ms, 30s, 2m or 1h, 0, or forever, got a map"},
      {"memory key for nbd", nbd_head + "      size: 1G\n", 6, "devices[0].backend.size",
       "expected an nbd backend key (type, uri, connections, tls-certificates, tls-psk-file, reconnect-timeout, "
       "request-timeout, structured-replies, direct-transmission, resize-poll-interval), got 'size'"},
      {"nbd key near miss", nbds_head + "      tls_psk_file: /etc/psk\n", 6, "devices[0].backend.tls_psk_file",
       "got 'tls_psk_file' (did you mean 'tls-psk-file'?)"},
      {"nbd uri given twice", nbd_head + "      uri: nbd://other/export\n", 6, "devices[0].backend.uri",
       "got it again (first on line 5)"},
      {"nbd block size still checked", nbd_head + "    logical-block-size: 8192\n", 6, "devices[0].logical-block-size",
       "expected a power of two from 512 to 4096, got '8192'"},
      {"errors in a later device name it",
       head + "  - name: disk1\n    backend: {type: memory, size: 1G}\n    queues: 0\n", 8, "devices[1].queues",
       "got '0'"},
  };
  for (const auto &c : cases) {
    CAPTURE(c.what);
    const std::string msg = error_of(c.yaml);
    CAPTURE(msg);
    const std::string where = "test.yaml:" + std::to_string(c.line) + ":";
    CHECK(msg.rfind(where, 0) == 0);
    const std::string key = std::string(c.key).empty() ? std::string() : " " + std::string(c.key) + ": ";
    if (!key.empty())
      CHECK(msg.find(key) != std::string::npos);
    CHECK(msg.find(c.fragment) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  }
}

TEST_CASE("ConfigError carries the position and key it names") {
  try {
    parse_config(head + "    queue-size: 300\n", "x.yaml");
    FAIL("no error thrown");
  } catch (const ConfigError &e) {
    CHECK(e.line() == 6);
    CHECK(e.column() == 17);
    CHECK(e.key() == "devices[0].queue-size");
    CHECK(std::string(e.what()) ==
          "x.yaml:6:17: devices[0].queue-size: expected a power of two from 2 to 1024, got '300'");
  }
}

TEST_CASE("errors point at the key or value they are about") {
  // Unknown keys at the key; bad values at the value; missing keys at the map that lacks them.
  CHECK(error_of(head + "      Size: 2G\n") ==
        "test.yaml:6:7: devices[0].backend.Size: expected a memory backend key (type, size), got 'Size' (did you mean "
        "'size'?)");
  CHECK(error_of(head + "    attach: host\n") ==
        "test.yaml:6:13: devices[0].attach: expected virtio-vdpa, vhost-vdpa or none, got 'host'");
  CHECK(error_of("devices:\n  - name: x\n    backend: {size: 1G}\n") ==
        "test.yaml:3:14: devices[0].backend.type: expected a backend type (memory, nbd, iscsi, file), got nothing (the "
        "key "
        "is missing)");
  // An empty value has no position of its own: the key's is used.
  CHECK(error_of(head + "    queues:\n    serial: x\n") ==
        "test.yaml:6:5: devices[0].queues: expected an integer from 1 to 64, got an empty value");
}

TEST_CASE("load_config names a file it cannot read") {
  vb::test::TempDir dir;
  const std::string missing = dir.file("missing.yaml");
  try {
    vb::load_config(missing);
    FAIL("no error thrown");
  } catch (const ConfigError &e) {
    CHECK(std::string(e.what()) == missing + ": cannot open: No such file or directory");
    CHECK(e.line() == 0);
  }
  try {
    vb::load_config(dir.path());
    FAIL("no error thrown");
  } catch (const ConfigError &e) {
    CHECK(std::string(e.what()) == dir.path() + ": expected a regular file, got a directory");
  }
}

TEST_CASE("load_config refuses a FIFO or a device at once instead of waiting to read it") {
  vb::test::TempDir dir;
  const std::string fifo = dir.file("fifo.yaml");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Without a writer, a blocking open() of the FIFO would never return.
  CHECK_THROWS_WITH_AS(vb::load_config(fifo), (fifo + ": expected a regular file, got a FIFO").c_str(), ConfigError);
  CHECK_THROWS_WITH_AS(vb::load_config("/dev/null"), "/dev/null: expected a regular file, got a character device",
                       ConfigError);
  // A symbolic link to a regular file is fine: configurations are often linked into /etc.
  const std::string real = dir.file("real.yaml");
  const std::string link = dir.file("link.yaml");
  write_file(real, head);
  REQUIRE(::symlink(real.c_str(), link.c_str()) == 0);
  CHECK(vb::load_config(link).devices.size() == 1);
}

TEST_CASE("load_config reads a file and names it in errors") {
  vb::test::TempDir dir;
  const std::string good = dir.file("good.yaml");
  write_file(good, head);
  const Config c = vb::load_config(good);
  CHECK(c.path == good);
  REQUIRE(c.devices.size() == 1);
  CHECK(c.devices[0].backend.as<vb::MemoryOptions>().size == 1ULL << 30);

  const std::string bad = dir.file("bad.yaml");
  write_file(bad, head + "    attach: host\n");
  try {
    vb::load_config(bad);
    FAIL("no error thrown");
  } catch (const ConfigError &e) {
    CHECK(std::string(e.what()).rfind(bad + ":6:13: devices[0].attach: ", 0) == 0);
  }

  const std::string huge = dir.file("huge.yaml");
  write_file(huge, head + std::string(2 << 20, '#'));
  try {
    vb::load_config(huge);
    FAIL("no error thrown");
  } catch (const ConfigError &e) {
    CHECK(std::string(e.what()) == huge + ": expected a configuration file of at most 1 MiB, got more");
  }
}

TEST_CASE("to_string gives the spellings of the file") {
  CHECK(std::string(vb::to_string(DeviceConfig::Attach::virtio_vdpa)) == "virtio-vdpa");
  CHECK(std::string(vb::to_string(DeviceConfig::Attach::vhost_vdpa)) == "vhost-vdpa");
  CHECK(std::string(vb::to_string(DeviceConfig::Attach::none)) == "none");
  const auto &memory = vb::parse_config("devices:\n  - name: d\n    backend: {type: memory, size: 1M}\n", "t.yaml");
  CHECK(memory.devices[0].backend.type() == "memory");
}

TEST_CASE("nbd structured-replies: off by default, a boolean when given") {
  const std::string base = "devices:\n  - name: d\n    backend:\n      type: nbd\n      uri: nbd://127.0.0.1/\n";
  CHECK_FALSE(vb::parse_config(base, "t.yaml").devices[0].backend.as<vb::NbdOptions>().structured_replies);
  CHECK(vb::parse_config(base + "      structured-replies: true\n", "t.yaml")
            .devices[0]
            .backend.as<vb::NbdOptions>()
            .structured_replies);
  CHECK_THROWS_WITH_AS(vb::parse_config(base + "      structured-replies: maybe\n", "t.yaml"),
                       doctest::Contains("t.yaml:6:27: devices[0].backend.structured-replies:"), vb::ConfigError);
}

TEST_CASE("nbd direct-transmission: on by default, a boolean when given") {
  const std::string base = "devices:\n  - name: d\n    backend:\n      type: nbd\n      uri: nbd://127.0.0.1/\n";
  CHECK(vb::parse_config(base, "t.yaml").devices[0].backend.as<vb::NbdOptions>().direct_transmission);
  CHECK_FALSE(vb::parse_config(base + "      direct-transmission: false\n", "t.yaml")
                  .devices[0]
                  .backend.as<vb::NbdOptions>()
                  .direct_transmission);
  CHECK_THROWS_WITH_AS(vb::parse_config(base + "      direct-transmission: 2\n", "t.yaml"),
                       doctest::Contains("t.yaml:6:28: devices[0].backend.direct-transmission:"), vb::ConfigError);
}

namespace {

// A valid iscsi device with the given URI on line 5; bad cases append from line 6.
std::string iscsi_with(const std::string &uri) {
  return "devices:\n"          // 1
         "  - name: lun1\n"    // 2
         "    backend:\n"      // 3
         "      type: iscsi\n" // 4
         "      uri: " +
         uri + "\n"; // 5
}

const std::string iscsi_head = iscsi_with("iscsi://192.0.2.1/iqn.2026-11.org.example:disk0/1");

} // namespace

TEST_CASE("an iscsi device with every key set") {
  const Config c = parse_config("devices:\n"
                                "  - name: lun1\n"
                                "    backend:\n"
                                "      type: iscsi\n"
                                "      uri: iscsi://[2001:db8::1]:3261/iqn.2026-11.org.example%3Adisk0/7\n"
                                "      initiator-name: iqn.2026-11.org.example:host1\n"
                                "      chap:\n"
                                "        username: user\n"
                                "        password-file: /etc/vduse-bridge/chap.secret\n"
                                "        target-username: target\n"
                                "        target-password-file: /etc/vduse-bridge/target.secret\n"
                                "      header-digest: prefer-crc32c\n"
                                "      reconnect-timeout: 5m\n"
                                "      request-timeout: 10s\n",
                                "iscsi.yaml");
  REQUIRE(c.devices.size() == 1);
  const auto &i = c.devices[0].backend.as<vb::IscsiOptions>();
  CHECK(c.devices[0].backend.type() == "iscsi");
  CHECK(i.uri == "iscsi://[2001:db8::1]:3261/iqn.2026-11.org.example%3Adisk0/7"); // as written
  CHECK(i.initiator_name == "iqn.2026-11.org.example:host1");
  CHECK(i.chap_username == "user");
  CHECK(i.chap_password_file == "/etc/vduse-bridge/chap.secret");
  CHECK(i.target_username == "target");
  CHECK(i.target_password_file == "/etc/vduse-bridge/target.secret");
  CHECK(i.header_digest == vb::IscsiOptions::HeaderDigest::prefer_crc32c);
  CHECK(i.reconnect_timeout == std::chrono::minutes(5));
  CHECK(i.request_timeout == std::chrono::seconds(10));
  CHECK(c.devices[0].logical_block_size == 0); // the LUN's
}

TEST_CASE("an iscsi device with several portals (multipath)") {
  const Config c = parse_config(iscsi_head + "      portals:\n"
                                             "        - 192.0.2.2\n"
                                             "        - 192.0.2.3:3261\n"
                                             "        - \"[2001:db8::4]\"\n"
                                             "      path-policy: round-robin\n",
                                "iscsi.yaml");
  const auto &i = c.devices[0].backend.as<vb::IscsiOptions>();
  CHECK(i.portals == std::vector<std::string>{"192.0.2.2:3260", "192.0.2.3:3261", "[2001:db8::4]:3260"});
  CHECK_FALSE(i.discover_portals);
  CHECK(i.path_policy == vb::IscsiOptions::PathPolicy::round_robin);
  CHECK(i.fencing == vb::IscsiOptions::Fencing::none);
  const Config fenced = parse_config(iscsi_head + "      fencing: persistent-reservation\n", "iscsi.yaml");
  CHECK(fenced.devices[0].backend.as<vb::IscsiOptions>().fencing == vb::IscsiOptions::Fencing::persistent_reservation);
  const Config discover = parse_config(iscsi_head + "      portals: discover\n", "iscsi.yaml");
  const auto &d = discover.devices[0].backend.as<vb::IscsiOptions>();
  CHECK(d.discover_portals);
  CHECK(d.portals.empty());
  const Config plain = parse_config(iscsi_head, "iscsi.yaml");
  const auto &none = plain.devices[0].backend.as<vb::IscsiOptions>();
  CHECK(none.portals.empty());
  CHECK_FALSE(none.discover_portals);
  CHECK(none.path_policy == vb::IscsiOptions::PathPolicy::failover);
  // The path checker: on by default with two or more paths only; 0 (or forever) turns it off.
  CHECK(none.effective_nop_interval(1) == std::chrono::milliseconds(0));
  CHECK(none.effective_nop_interval(2) == std::chrono::seconds(5));
  CHECK(none.nop_timeout == std::chrono::seconds(5));
  const Config nop = parse_config(iscsi_head + "      nop-interval: 2s\n      nop-timeout: 3s\n", "iscsi.yaml");
  const auto &n = nop.devices[0].backend.as<vb::IscsiOptions>();
  CHECK(n.effective_nop_interval(1) == std::chrono::seconds(2));
  CHECK(n.nop_timeout == std::chrono::seconds(3));
  const Config off = parse_config(iscsi_head + "      nop-interval: 0\n", "iscsi.yaml");
  CHECK(off.devices[0].backend.as<vb::IscsiOptions>().effective_nop_interval(4) == std::chrono::milliseconds(0));
}

TEST_CASE("an iscsi device gets the iscsi defaults") {
  const Config c = parse_config(iscsi_head, "iscsi.yaml");
  const auto &i = c.devices[0].backend.as<vb::IscsiOptions>();
  CHECK(i.uri == "iscsi://192.0.2.1/iqn.2026-11.org.example:disk0/1");
  CHECK(i.initiator_name.empty()); // derived from the host name when connecting
  CHECK(i.chap_username.empty());
  CHECK(i.chap_password_file.empty());
  CHECK(i.target_username.empty());
  CHECK(i.header_digest == vb::IscsiOptions::HeaderDigest::none);
  CHECK(i.reconnect_timeout == std::chrono::seconds(60));
  CHECK(i.request_timeout == std::chrono::milliseconds(0)); // issue 12 item 7: off by default
  // One-way CHAP, other digests, zero timeouts.
  const Config chap = parse_config(iscsi_head + "      chap: {username: u, password-file: /s}\n"
                                                "      header-digest: crc32c\n"
                                                "      reconnect-timeout: 0\n"
                                                "      request-timeout: 0\n",
                                   "iscsi.yaml");
  const auto &j = chap.devices[0].backend.as<vb::IscsiOptions>();
  CHECK(j.chap_username == "u");
  CHECK(j.chap_password_file == "/s");
  CHECK(j.target_username.empty());
  CHECK(j.header_digest == vb::IscsiOptions::HeaderDigest::crc32c);
  CHECK(j.reconnect_timeout.count() == 0);
  CHECK(j.request_timeout.count() == 0);
  for (const char *uri : {"iscsi://host/iqn.2026-11.org.example:t/0",
                          "iscsi://host:3260/iqn.2026-11.org.example:y/16383", "iscsi://[::1]/eui.02004567A425678D/1",
                          "iscsi://[::1]:860/naa.52004567ba64678d/1", "'iscsi://h/iqn.2026-11.org.example%3Adisk/2'"}) {
    CAPTURE(uri);
    CHECK(error_of(iscsi_with(uri)) == "(no error thrown)");
  }
}

TEST_CASE("iscsi: a URI with credentials is refused without showing them") {
  CHECK(error_of(iscsi_with("iscsi://alice%s3cret@192.0.2.1/iqn.x:d/1")) ==
        "test.yaml:5:12: devices[0].backend.uri: expected a URI without user information, got one in "
        "'iscsi://***@192.0.2.1/iqn.x:d/1': secrets come from files, never from the URI; "
        "name the CHAP user with chap.username and its password with chap.password-file");
  CHECK(error_of(iscsi_with("iscsi://alice%s3cret@192.0.2.1/iqn.2026-11.org.example:disk0/1")).find("s3cret") ==
        std::string::npos);
  CHECK(error_of(iscsi_with("iscsi://alice@host/t/1")).find("got one in 'iscsi://***@host/t/1'") != std::string::npos);
}

TEST_CASE("bad iscsi keys name the file, line, key and what was expected") {
  struct Case {
    std::string what;
    std::string yaml;
    int line;
    const char *key;
    std::string fragment;
  };
  const Case cases[] = {
      {"uri a sequence", iscsi_with("[iscsi://h/t/1]"), 5, "devices[0].backend.uri", "got a sequence"},
      {"uri of another scheme", iscsi_with("nbd://h/t/1"), 5, "devices[0].backend.uri",
       "expected a URI scheme of iscsi, got 'nbd' in 'nbd://h/t/1'"},
      {"uri iser", iscsi_with("iser://h/t/1"), 5, "devices[0].backend.uri", "got 'iser'"},
      {"uri without a lun", iscsi_with("iscsi://h/iqn.x:y"), 5, "devices[0].backend.uri",
       "(the target name and the LUN follow the host)"},
      {"uri without a target", iscsi_with("iscsi://h//1"), 5, "devices[0].backend.uri",
       "(the target name and the LUN follow the host)"},
      {"uri without a path", iscsi_with("iscsi://h"), 5, "devices[0].backend.uri", "the LUN follow the host"},
      {"uri lun too big", iscsi_with("iscsi://h/t/16384"), 5, "devices[0].backend.uri",
       "expected a LUN from 0 to 16383 at the end of the URI, got '16384' in 'iscsi://h/t/16384'"},
      {"uri lun not a number", iscsi_with("iscsi://h/t/one"), 5, "devices[0].backend.uri", "got 'one'"},
      {"uri target with a slash", iscsi_with("iscsi://h/a/b/1"), 5, "devices[0].backend.uri",
       "(a target name has no '/')"},
      {"uri without a host", iscsi_with("iscsi:///t/1"), 5, "devices[0].backend.uri", "expected a host in the URI"},
      {"uri port 0", iscsi_with("iscsi://h:0/t/1"), 5, "devices[0].backend.uri",
       "expected a port from 1 to 65535 in the URI, got '0'"},
      {"uri port too big", iscsi_with("iscsi://h:65536/t/1"), 5, "devices[0].backend.uri", "got '65536'"},
      {"uri port empty", iscsi_with("iscsi://h:/t/1"), 5, "devices[0].backend.uri", "a port number after ':'"},
      {"uri bad ipv6", iscsi_with("iscsi://[::1/t/1"), 5, "devices[0].backend.uri", "an IPv6 address in brackets"},
      {"uri with a query", iscsi_with("iscsi://h/t/1?header_digest=crc32c"), 5, "devices[0].backend.uri",
       "expected a URI without a query or fragment, got 'iscsi://h/t/1?header_digest=crc32c': digests and CHAP are "
       "set with the backend keys header-digest and chap"},
      {"uri with a space", iscsi_with("\"iscsi://h/my disk/1\""), 5, "devices[0].backend.uri",
       "expected a URI without spaces"},
      {"initiator-name not an iSCSI name", iscsi_head + "      initiator-name: host1\n", 6,
       "devices[0].backend.initiator-name",
       "expected an iSCSI name starting with iqn., eui. or naa. such as iqn.2026-11.org.example:host1 (at most 223 "
       "letters, digits, '.', '-' and ':'), got 'host1'"},
      {"initiator-name with a space", iscsi_head + "      initiator-name: \"iqn.x y\"\n", 6,
       "devices[0].backend.initiator-name", "got \"iqn.x y\""},
      {"initiator-name with an underscore", iscsi_head + "      initiator-name: iqn.a_b\n", 6,
       "devices[0].backend.initiator-name", "got 'iqn.a_b'"},
      {"initiator-name too long", iscsi_head + "      initiator-name: iqn." + std::string(220, 'a') + "\n", 6,
       "devices[0].backend.initiator-name", "(224 bytes)"},
      {"chap a scalar", iscsi_head + "      chap: user\n", 6, "devices[0].backend.chap",
       "expected a map with the keys username and password-file (and target-username and target-password-file for "
       "mutual CHAP), got 'user'"},
      {"chap password inline", iscsi_head + "      chap:\n        username: u\n        password: s3cret\n", 8,
       "devices[0].backend.chap.password",
       "expected a chap key (username, password-file, target-username, target-password-file), got 'password'"},
      {"chap key near miss", iscsi_head + "      chap:\n        username: u\n        password_file: /s\n", 8,
       "devices[0].backend.chap.password_file", "(did you mean 'password-file'?)"},
      {"chap username missing", iscsi_head + "      chap:\n        password-file: /s\n", 7,
       "devices[0].backend.chap.username",
       "expected a CHAP user name of 1 to 255 bytes of printable ASCII without spaces, got nothing (the key is "
       "missing)"},
      {"chap password-file missing", iscsi_head + "      chap:\n        username: u\n", 7,
       "devices[0].backend.chap.password-file",
       "expected an absolute path (starting with '/'), got nothing (the key is missing) (the file holding the CHAP "
       "password)"},
      {"chap password-file relative", iscsi_head + "      chap: {username: u, password-file: chap.secret}\n", 6,
       "devices[0].backend.chap.password-file", "expected an absolute path (starting with '/'), got 'chap.secret'"},
      {"chap username with a space", iscsi_head + "      chap: {username: \"a b\", password-file: /s}\n", 6,
       "devices[0].backend.chap.username", "got \"a b\""},
      {"chap key twice",
       iscsi_head + "      chap:\n        username: u\n        username: v\n        password-file: /p\n", 8,
       "devices[0].backend.chap.username", "expected each key once in a map, got it again (first on line 7)"},
      {"mutual chap without a password file",
       iscsi_head + "      chap: {username: u, password-file: /s, target-username: t}\n", 6,
       "devices[0].backend.chap.target-password-file",
       "got nothing (the key is missing) (mutual CHAP needs both target-username and target-password-file)"},
      {"mutual chap without a user name",
       iscsi_head + "      chap: {username: u, password-file: /s, target-password-file: /t}\n", 6,
       "devices[0].backend.chap.target-username", "(mutual CHAP needs both target-username and target-password-file)"},
      {"header-digest unknown", iscsi_head + "      header-digest: md5\n", 6, "devices[0].backend.header-digest",
       "expected none, crc32c or prefer-crc32c, got 'md5'"},
      {"reconnect-timeout without unit", iscsi_head + "      reconnect-timeout: 60\n", 6,
       "devices[0].backend.reconnect-timeout", "expected a duration with a unit (ms, s, m, h), got '60'"},
      {"request-timeout a map", iscsi_head + "      request-timeout: {s: 1}\n", 6, "devices[0].backend.request-timeout",
       "got a map"},
      {"nbd key for iscsi", iscsi_head + "      connections: 4\n", 6, "devices[0].backend.connections",
       "expected an iscsi backend key (type, uri, portals, path-policy, fencing, initiator-name, chap, header-digest, "
       "reconnect-timeout, request-timeout, nop-interval, nop-timeout), got 'connections'"},
      {"portals a map", iscsi_head + "      portals: {a: 1}\n", 6, "devices[0].backend.portals",
       "expected a list of portals of the URI's target (host or host:port, such as [192.0.2.2:3260, "
       "\"[2001:db8::2]:3260\"]) or discover, got a map"},
      {"portals empty", iscsi_head + "      portals: []\n", 6, "devices[0].backend.portals", "or discover, got"},
      {"portals another word", iscsi_head + "      portals: all\n", 6, "devices[0].backend.portals",
       "or discover, got 'all'"},
      {"portal with a bad port", iscsi_head + "      portals:\n        - 192.0.2.2:3260\n        - 192.0.2.3:0\n", 8,
       "devices[0].backend.portals[1]", "expected a port from 1 to 65535 in the portal, got '0'"},
      {"portal a URI", iscsi_head + "      portals: [\"iscsi://192.0.2.2/\"]\n", 6, "devices[0].backend.portals[0]",
       "expected a portal, host or host:port, such as 192.0.2.2:3260, got \"iscsi://192.0.2.2/\""},
      {"portal a map", iscsi_head + "      portals:\n        - {host: a}\n", 7, "devices[0].backend.portals[0]",
       "expected a portal, host or host:port, such as 192.0.2.2:3260, got a map"},
      {"portal listed twice", iscsi_head + "      portals: [192.0.2.2, \"192.0.2.2:3260\"]\n", 6,
       "devices[0].backend.portals[1]", "expected each path once: '192.0.2.2:3260' is listed twice"},
      {"portal of the URI", iscsi_head + "      portals: [\"192.0.2.1:3260\"]\n", 6, "devices[0].backend.portals[0]",
       "expected each path once: '192.0.2.1:3260' is the URI's portal"},
      {"too many portals", iscsi_head + "      portals: [a, b, c, d, e, f, g, h]\n", 6, "devices[0].backend.portals",
       "expected at most 7 portals besides the URI's (one path each), got more"},
      {"path-policy unknown", iscsi_head + "      path-policy: least-busy\n", 6, "devices[0].backend.path-policy",
       "expected failover or round-robin, got 'least-busy'"},
      {"fencing unknown", iscsi_head + "      fencing: scsi2\n", 6, "devices[0].backend.fencing",
       "expected none or persistent-reservation, got 'scsi2'"},
      {"iscsi key near miss", iscsi_head + "      header_digest: none\n", 6, "devices[0].backend.header_digest",
       "(did you mean 'header-digest'?)"},
      {"chap for nbd", nbd_head + "      chap: {username: u, password-file: /s}\n", 6, "devices[0].backend.chap",
       "expected an nbd backend key"},
  };
  for (const auto &c : cases) {
    CAPTURE(c.what);
    const std::string msg = error_of(c.yaml);
    CAPTURE(msg);
    CHECK(msg.rfind("test.yaml:" + std::to_string(c.line) + ":", 0) == 0);
    CHECK(msg.find(" " + std::string(c.key) + ": ") != std::string::npos);
    CHECK(msg.find(c.fragment) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
  }
}

TEST_CASE("nbd resize-poll-interval: 30s by default, 0 turns it off") {
  const std::string base = "devices:\n  - name: d\n    backend:\n      type: nbd\n      uri: nbd://127.0.0.1/\n";
  CHECK(vb::parse_config(base, "t.yaml").devices[0].backend.as<vb::NbdOptions>().resize_poll_interval ==
        std::chrono::seconds(30));
  CHECK(vb::parse_config(base + "      resize-poll-interval: 0\n", "t.yaml")
            .devices[0]
            .backend.as<vb::NbdOptions>()
            .resize_poll_interval.count() == 0);
  CHECK(vb::parse_config(base + "      resize-poll-interval: 5s\n", "t.yaml")
            .devices[0]
            .backend.as<vb::NbdOptions>()
            .resize_poll_interval == std::chrono::seconds(5));
  CHECK_THROWS_WITH_AS(vb::parse_config(base + "      resize-poll-interval: often\n", "t.yaml"),
                       doctest::Contains("t.yaml:6:29: devices[0].backend.resize-poll-interval:"), vb::ConfigError);
}

TEST_CASE("control-timeout: 0 (forever) by default, whole seconds when given") {
  const std::string base = "devices:\n  - name: d\n    backend:\n      type: memory\n      size: 1M\n";
  CHECK(vb::parse_config(base, "t.yaml").devices[0].control_timeout.count() == 0);
  CHECK(vb::parse_config(base + "    control-timeout: 2m\n", "t.yaml").devices[0].control_timeout ==
        std::chrono::minutes(2));
  CHECK_THROWS_WITH_AS(vb::parse_config(base + "    control-timeout: 500ms\n", "t.yaml"),
                       doctest::Contains("t.yaml:6:22: devices[0].control-timeout: expected whole seconds"),
                       vb::ConfigError);
  CHECK_THROWS_WITH_AS(vb::parse_config(base + "    control-timeout: soon\n", "t.yaml"),
                       doctest::Contains("t.yaml:6:22: devices[0].control-timeout:"), vb::ConfigError);
}

TEST_CASE("a YAML syntax error is reported without the raw bytes yaml-cpp puts in its message") {
  // A NUL makes yaml-cpp read the text as UTF-16/32, and its message then ends in its own
  // end-of-stream byte (0x04): found by fuzz_config.
  const std::string msg = error_of(std::string("Z\n\0", 3));
  CHECK(msg == "test.yaml:2:3: invalid YAML: unknown escape character: \\x04");
  for (char c : msg)
    CHECK((c >= 0x20 && c < 0x7f));
}

TEST_CASE("a token no value can start with is an error, not a loop that eats all memory") {
  // yaml-cpp 0.7's LoadAll() adds empty documents forever on these: found by fuzz_config.
  CHECK(error_of(",:))") == "test.yaml:1:1: invalid YAML: no value can start here");
  CHECK(error_of(",") == "test.yaml:1:1: invalid YAML: no value can start here");
  CHECK(error_of(head + "...\n,\n") == "test.yaml:7:1: invalid YAML: no value can start here");
}

TEST_CASE("a file device: its keys, its defaults, and errors at the key") {
  const std::string head = "devices:\n  - name: f\n    read-only: true\n    backend:\n      type: file\n";
  const Config all = parse_config(head + "      path: /var/lib/images/disk0.raw\n"
                                         "      direct: off\n"
                                         "      queue-depth: 64\n"
                                         "      resize-poll-interval: 0\n",
                                  "file.yaml");
  REQUIRE(all.devices.size() == 1);
  CHECK(all.devices[0].backend.type() == "file");
  const auto &o = all.devices[0].backend.as<vb::FileBackendOptions>();
  CHECK(o.path == "/var/lib/images/disk0.raw");
  CHECK(o.direct == vb::FileBackendOptions::Direct::off);
  CHECK(o.queue_depth == 64);
  CHECK(o.resize_poll_interval.count() == 0);
  CHECK(o.read_only); // from the device's read-only
  const Config defaults =
      parse_config("devices:\n  - name: f\n    backend:\n      type: file\n      path: /dev/sdb\n", "file.yaml");
  const auto &d = defaults.devices[0].backend.as<vb::FileBackendOptions>();
  CHECK(d.direct == vb::FileBackendOptions::Direct::automatic);
  CHECK(d.queue_depth == 128);
  CHECK(d.resize_poll_interval == std::chrono::seconds(5));
  CHECK_FALSE(d.read_only);
  CHECK(all.devices[0].same_settings(all.devices[0]));
  CHECK_FALSE(all.devices[0].same_settings(defaults.devices[0]));

  auto error = [&](const std::string &keys) {
    try {
      (void)parse_config(head + keys, "file.yaml");
    } catch (const vb::ConfigError &e) {
      return std::string(e.what());
    }
    return std::string("(no error thrown)");
  };
  CHECK(error("") == "file.yaml:5:7: devices[0].backend.path: expected an absolute path (starting with '/'), got "
                     "nothing (the key is missing)");
  CHECK(error("      path: disk.raw\n") ==
        "file.yaml:6:13: devices[0].backend.path: expected an absolute path (starting with '/'), got 'disk.raw'");
  CHECK(error("      path: /d\n      direct: maybe\n") ==
        "file.yaml:7:15: devices[0].backend.direct: expected auto, on or off, got 'maybe'");
  CHECK(error("      path: /d\n      queue-depth: 0\n") ==
        "file.yaml:7:20: devices[0].backend.queue-depth: expected an integer from 1 to 4096, got '0'");
  CHECK(error("      path: /d\n      uri: nbd://x/\n") ==
        "file.yaml:7:7: devices[0].backend.uri: expected a file backend key (type, path, direct, queue-depth, "
        "resize-poll-interval), got 'uri'");
  CHECK(error("      path: /d\n      queue_depth: 4\n") ==
        "file.yaml:7:7: devices[0].backend.queue_depth: expected a file backend key (type, path, direct, queue-depth, "
        "resize-poll-interval), got 'queue_depth' (did you mean 'queue-depth'?)");
}

// ---- issue 14: every error at once, hints, URIs, durations, pre-flight ----------------------

namespace {

// The messages check_config_text() gives, one per problem.
std::vector<std::string> errors_of(const std::string &yaml) {
  std::vector<std::string> out;
  for (const auto &e : vb::check_config_text(yaml, "test.yaml").errors)
    out.emplace_back(e.what());
  return out;
}

} // namespace

TEST_CASE("check_config reports every problem of the file, in file order") {
  const std::string yaml = "devices:\n"                   // 1
                           "  - name: disk0\n"            // 2
                           "    queues: 0\n"              // 3  value error
                           "    backend:\n"               // 4
                           "      type: memory\n"         // 5
                           "      size: lots\n"           // 6  backend value error
                           "      colour: red\n"          // 7  unknown backend key
                           "  - name: disk0\n"            // 8  duplicate name
                           "    queus: 2\n"               // 9  unknown device key (shape step)
                           "    attach: host\n"           // 10 value error
                           "    backend: {type: tape}\n"; // 11 unknown type
  const auto checked = vb::check_config_text(yaml, "test.yaml");
  CHECK_FALSE(checked.config);
  std::vector<int> lines;
  for (const auto &e : checked.errors)
    lines.push_back(e.line());
  CHECK(lines == std::vector<int>{3, 6, 7, 8, 9, 10, 11});
  REQUIRE(checked.errors.size() == 7);
  CHECK(std::string(checked.errors[0].what()).rfind("test.yaml:3:13: devices[0].queues: expected an integer", 0) == 0);
  CHECK(std::string(checked.errors[4].what()).rfind("test.yaml:9:5: devices[1].queus: expected a device key", 0) == 0);
  CHECK(checked.errors[6].key() == "devices[1].backend.type");

  // The daemon's API: one ConfigError listing them all, a line each, the first one's position.
  try {
    parse_config(yaml, "test.yaml");
    FAIL("no error thrown");
  } catch (const ConfigError &e) {
    CHECK(e.count() == 7);
    CHECK(e.line() == 3);
    const std::string what = e.what();
    CHECK(std::count(what.begin(), what.end(), '\n') == 6);
    CHECK(what.rfind(checked.errors[0].what(), 0) == 0);
  }
  // One problem: what() is that problem alone, as before.
  CHECK(errors_of(head + "    queues: 0\n").size() == 1);
  CHECK(error_of(head + "    queues: 0\n").find('\n') == std::string::npos);
  // A good file: the configuration, no errors.
  const auto good = vb::check_config_text(head, "test.yaml");
  CHECK(good.errors.empty());
  CHECK(good.config.has_value());
}

TEST_CASE("check_config stops at a YAML syntax error and reports an unreadable file as its only error") {
  CHECK(errors_of("devices: [\n  - name: x\n").size() == 1);
  vb::test::TempDir dir;
  const auto missing = vb::check_config(dir.file("none.yaml"));
  REQUIRE(missing.errors.size() == 1);
  CHECK(std::string(missing.errors[0].what()) == dir.file("none.yaml") + ": cannot open: No such file or directory");
}

TEST_CASE("unknown keys get a near miss, or the level they belong to") {
  struct Case {
    std::string yaml;
    std::string hint;
  };
  const Case cases[] = {
      {head + "    queus: 2\n", "got 'queus' (did you mean 'queues'?)"},
      {head + "    seral: abc\n", "got 'seral' (did you mean 'serial'?)"},
      {head + "    read-onyl: true\n", "(did you mean 'read-only'?)"},
      {head + "    uri: nbd://h/\n", "got 'uri' ('uri' belongs under backend:)"},
      {head + "    reconnect-timeout: 5s\n", "('reconnect-timeout' belongs under backend:)"},
      {head + "      queues: 2\n", "got 'queues' ('queues' belongs at the device level)"},
      {head + "      serail: x\n", "(did you mean 'serial', which belongs at the device level?)"},
      {head + "      szie: 1G\n", "(did you mean 'size'?)"},
      {"devcies:\n  - name: x\n", "got 'devcies' (did you mean 'devices'?)"},
      {head + "name: x\n", "got 'name' ('name' belongs under a device in devices:)"},
      {iscsi_head + "      chap: {usernme: u, password-file: /p}\n", "got 'usernme' (did you mean 'username'?)"},
  };
  for (const auto &c : cases) {
    const std::string msg = error_of(c.yaml);
    CAPTURE(msg);
    CHECK(msg.find(c.hint) != std::string::npos);
  }
  // Too far from every key: no hint.
  CHECK(error_of(head + "    colour: blue\n").find("did you mean") == std::string::npos);
  CHECK(error_of(head + "    q: 1\n").find("did you mean") == std::string::npos);
  CHECK(vb::config_near_miss("queue_size", vb::config_device_keys) == "queue-size");
  CHECK(vb::config_near_miss("Queue-Sise", vb::config_device_keys) == "queue-size");
  CHECK(vb::config_near_miss("qeueus", vb::config_device_keys) == "queues"); // two neighbours swapped: 1
}

TEST_CASE("NBD URIs: ports, IPv6, vsock CIDs, export names and socket paths checked, the whole value shown") {
  for (const std::string &uri : std::vector<std::string>{
           "nbd://[::1]:10809/export", "nbd://[2001:db8::1]/e", "nbd://h:65535/e", "nbd+vsock://2:10809/e",
           "nbd+vsock://4294967294/", "nbd+vsock://1/e", "nbd+unix:///e?socket=/run/nbd/s",
           "nbd://h/" + std::string(4096, 'x'), "nbd+unix:///?socket=/" + std::string(106, 's')}) {
    CAPTURE(uri);
    CHECK(error_of(nbd_with(uri)) == "(no error thrown)");
  }
  struct Case {
    std::string uri;
    std::string fragment;
  };
  const Case cases[] = {
      {"nbd://h:0/e", "expected a port from 1 to 65535, got '0' in 'nbd://h:0/e'"},
      {"nbd://h:70000/e", "expected a port from 1 to 65535, got '70000' in 'nbd://h:70000/e'"},
      {"nbd://h:x/e", "got 'x' in 'nbd://h:x/e'"},
      {"nbd://h:/e", "got '' in 'nbd://h:/e'"},
      {"nbd://[::1/e", "expected an IPv6 address closed by ']' such as [::1]:10809, got '[::1' in 'nbd://[::1/e'"},
      {"nbd://[]/e", "an IPv6 address in brackets such as [::1], got '[]'"},
      {"nbd://[::1]x/e", "':' and a port after an IPv6 address in brackets"},
      {"nbd://::1:10809/e", "an IPv6 address in brackets such as [::1]:10809, got '::1:10809'"},
      {"nbd://:10809/e", "a host before the port"},
      {"nbd+vsock://4294967295/e", "a vsock CID from 0 to 4294967294 as the host"},
      {"nbd+vsock://99999999999/e", "got '99999999999' in 'nbd+vsock://99999999999/e'"},
      {"nbd+vsock://host/e", "got 'host'"},
      {"nbd+vsock://2:0/e", "a vsock port from 1 to 4294967294"},
      {"nbd+unix://h/e?socket=/s", "expected no host in a nbd+unix URI"},
      {"nbd+unix:///e?socket=run/s", "expected an absolute socket= path (the daemon's working directory is /), got "
                                     "'run/s' in 'nbd+unix:///e?socket=run/s'"},
      {"nbd+unix:///e?socket=/" + std::string(107, 's'),
       "expected a socket= path of at most 107 bytes (what a unix socket address holds), got 108 bytes"},
      {"nbd://h/" + std::string(4097, 'x'),
       "expected an export name of at most 4096 bytes (the NBD protocol's limit), got 4097 bytes in"},
      {"nbd://h/" + std::string(4095, 'x') + "%41%41", "got 4097 bytes"},
  };
  for (const auto &c : cases) {
    CAPTURE(c.uri);
    const std::string msg = error_of(nbd_with(c.uri));
    CAPTURE(msg);
    CHECK(msg.rfind("test.yaml:5:12: devices[0].backend.uri: ", 0) == 0);
    CHECK(msg.find(c.fragment) != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(vb::check_nbd_uri("nbd://h:0/"), doctest::Contains("got '0' in 'nbd://h:0/'"),
                       std::invalid_argument);
}

TEST_CASE("iSCSI URIs: the target is an iqn., eui. or naa. name") {
  for (const char *target : {"iqn.2026-11.org.example", "iqn.2026-11.org.example:disk0",
                             "iqn.1992-01.com.example:a:b.c", "iqn.2026-11.org.example%3Adisk0", "eui.02004567A425678D",
                             "naa.52004567BA64678D", "naa.6001405abcdef0123456789abcdef012"}) {
    CAPTURE(target);
    CHECK(error_of(iscsi_with("iscsi://h/" + std::string(target) + "/0")) == "(no error thrown)");
  }
  struct Case {
    const char *target;
    const char *fragment;
  };
  const Case cases[] = {
      {"disk0", "naa.): a name starting with iqn., eui. or naa., got 'disk0' in 'iscsi://h/disk0/0'"},
      {"iqn.x:y", "): a year and month after iqn. (iqn.YYYY-MM.)"},
      {"iqn.2026-13.org.example:d", "a year and month"},
      {"iqn.2026-11.:d", "a reversed domain name after the date"},
      {"iqn.2026-11.Org.Example:Disk", "lowercase letters only"},
      {"iqn.2026-11.org.example:d_1", "only letters, digits, '-', '.' and ':'"},
      {"eui.0200", "16 hex digits after eui."},
      {"naa.12345", "16 or 32 hex digits after naa."},
  };
  for (const auto &c : cases) {
    CAPTURE(c.target);
    const std::string msg = error_of(iscsi_with("iscsi://h/" + std::string(c.target) + "/0"));
    CAPTURE(msg);
    CHECK(msg.rfind("test.yaml:5:12: devices[0].backend.uri: expected an iSCSI target name", 0) == 0);
    CHECK(msg.find(c.fragment) != std::string::npos);
  }
}

TEST_CASE("durations: forever for reconnect-timeout, 0's meaning per key, and a bound instead of overflow") {
  const auto nbd = [](const std::string &extra) {
    return parse_config(nbd_head + extra, "t.yaml").devices[0].backend.as<vb::NbdOptions>();
  };
  const auto iscsi = [](const std::string &extra) {
    return parse_config(iscsi_head + extra, "t.yaml").devices[0].backend.as<vb::IscsiOptions>();
  };
  // Hold I/O for ever: the session core's "no limit".
  CHECK(nbd("      reconnect-timeout: forever\n").reconnect_timeout == std::chrono::milliseconds::max());
  CHECK(iscsi("      reconnect-timeout: forever\n").reconnect_timeout == std::chrono::milliseconds::max());
  CHECK(nbd("      reconnect-timeout: 0\n").reconnect_timeout.count() == 0); // fail at once
  // request-timeout: 0 already means no limit, and forever is the same.
  CHECK(nbd("      request-timeout: forever\n").request_timeout.count() == 0);
  CHECK(iscsi("      request-timeout: forever\n").request_timeout.count() == 0);
  // control-timeout: 0 and forever: the kernel waits for ever.
  const std::string base = "devices:\n  - name: d\n    backend:\n      type: memory\n      size: 1M\n";
  CHECK(parse_config(base + "    control-timeout: forever\n", "t.yaml").devices[0].control_timeout.count() == 0);
  // A key that has no forever says so; too long a duration is refused with the bound.
  CHECK(error_of(nbd_head + "      resize-poll-interval: forever\n") ==
        "test.yaml:6:29: devices[0].backend.resize-poll-interval: expected a duration such as 500ms, 30s, 2m or 1h, "
        "got 'forever' (this key has no forever)");
  CHECK(error_of(nbd_head + "      reconnect-timeout: 99999999h\n") ==
        "test.yaml:6:26: devices[0].backend.reconnect-timeout: expected a duration of at most 1000000h (about 114 "
        "years), got '99999999h' (for no limit write forever)");
  CHECK(error_of(base + "    control-timeout: 99999999h\n").find("at most 1000000h") != std::string::npos);
  CHECK(error_of(nbd_head + "      reconnect-timeout: Forever\n").find("got 'Forever'") != std::string::npos);
}

TEST_CASE("pre-flight: secret files, certificate directories, socket and file directories") {
  vb::test::TempDir dir;
  const auto findings_of = [](const std::string &yaml) {
    std::vector<std::string> out;
    for (const auto &f : vb::preflight_config(parse_config(yaml, "t.yaml")))
      out.push_back(std::string(f.severity == vb::PreflightFinding::Severity::error ? "error: " : "warning: ") +
                    f.message);
    return out;
  };
  const std::string psk = dir.file("psk");
  write_file(psk, "alice:00\n");
  const std::string with_psk = nbds_head + "      tls-psk-file: " + psk + "\n";
  REQUIRE(::chmod(psk.c_str(), 0600) == 0);
  CHECK(findings_of(with_psk).empty());
  REQUIRE(::chmod(psk.c_str(), 0640) == 0);
  CHECK(findings_of(with_psk) ==
        std::vector<std::string>{"error: t.yaml:2: devices[0].backend.tls-psk-file: " + psk +
                                 " is readable by its group (mode 0640): a secret must not be; run chmod go-rwx " +
                                 psk});
  REQUIRE(::chmod(psk.c_str(), 0604) == 0);
  CHECK(findings_of(with_psk).at(0).find("is readable by every user (mode 0604)") != std::string::npos);
  CHECK(findings_of(nbds_head + "      tls-psk-file: " + dir.file("nope") + "\n") ==
        std::vector<std::string>{"error: t.yaml:2: devices[0].backend.tls-psk-file: " + dir.file("nope") +
                                 " does not exist"});
  CHECK(findings_of(nbds_head + "      tls-psk-file: " + dir.path() + "\n")
            .at(0)
            .find("is a directory, not a regular file") != std::string::npos);

  // A certificate directory needs libnbd's three client files, the key private.
  const std::string pki = dir.file("pki");
  REQUIRE(::mkdir(pki.c_str(), 0700) == 0);
  const std::string with_pki = nbds_head + "      tls-certificates: " + pki + "\n";
  const auto missing = findings_of(with_pki);
  REQUIRE(missing.size() == 3);
  CHECK(missing[0] == "error: t.yaml:2: devices[0].backend.tls-certificates: " + pki +
                          "/ca-cert.pem: missing (libnbd needs ca-cert.pem, client-cert.pem and client-key.pem)");
  CHECK(missing[2].find("/client-key.pem does not exist") != std::string::npos);
  for (const char *name : {"ca-cert.pem", "client-cert.pem", "client-key.pem"})
    write_file(pki + "/" + name, "x");
  REQUIRE(::chmod((pki + "/client-key.pem").c_str(), 0600) == 0);
  CHECK(findings_of(with_pki).empty());
  CHECK(
      findings_of(nbds_head + "      tls-certificates: " + dir.file("nodir") + "\n").at(0).find("is not a directory") !=
      std::string::npos);

  // A unix socket: its directory must exist (error); the socket itself may come later (warning).
  CHECK(findings_of(nbd_with("nbd+unix:///e?socket=" + dir.file("run/s"))) ==
        std::vector<std::string>{"error: t.yaml:2: devices[0].backend.uri: the socket " + dir.file("run/s") +
                                 ": its directory " + dir.file("run") + " does not exist"});
  const auto later = findings_of(nbd_with("nbd+unix:///e?socket=" + dir.file("s")));
  REQUIRE(later.size() == 1);
  CHECK(later[0].rfind("warning: t.yaml:2: devices[0].backend.uri: the socket " + dir.file("s") + " does not exist yet",
                       0) == 0);
  CHECK(findings_of(nbd_with("nbd+unix:///e?socket=" + psk)).at(0).find("is a regular file, not a unix socket") !=
        std::string::npos);

  // iSCSI CHAP password files.
  const std::string chap = iscsi_head + "      chap: {username: u, password-file: " + psk + "}\n";
  CHECK(findings_of(chap).at(0).rfind("error: t.yaml:2: devices[0].backend.chap.password-file: " + psk, 0) == 0);
  REQUIRE(::chmod(psk.c_str(), 0400) == 0);
  CHECK(findings_of(chap).empty());

  // A file device: the directory must be there, the file may come later.
  const auto file_dev = [](const std::string &path) {
    return "devices:\n  - name: f\n    backend:\n      type: file\n      path: " + path + "\n";
  };
  CHECK(findings_of(file_dev(psk)).empty());
  CHECK(findings_of(file_dev(dir.file("later.img"))).at(0).rfind("warning: ", 0) == 0);
  CHECK(findings_of(file_dev(dir.file("no/such.img"))).at(0) ==
        "error: t.yaml:2: devices[0].backend.path: " + dir.file("no/such.img") + ": its directory " + dir.file("no") +
            " does not exist");
  CHECK(findings_of(file_dev("/dev/null")).at(0).find("is a character device") != std::string::npos);
}

TEST_CASE("pre-flight of the host: /dev/vduse/control and the kernel modules, warnings unless strict") {
  vb::test::TempDir root;
  const Config plain = parse_config(head, "t.yaml");
  const auto bare = vb::preflight_host(plain, false, root.path());
  REQUIRE(bare.size() == 3); // vduse, virtio_vdpa, /dev/vduse/control
  for (const auto &f : bare)
    CHECK(f.severity == vb::PreflightFinding::Severity::warning);
  CHECK(bare[0].message.find("the kernel module vduse is neither loaded nor in") != std::string::npos);
  CHECK(vb::preflight_host(plain, true, root.path()).at(0).severity == vb::PreflightFinding::Severity::error);
  for (const char *d : {"/sys", "/sys/module", "/sys/module/vduse", "/sys/module/virtio_vdpa", "/dev", "/dev/vduse"})
    REQUIRE(::mkdir((root.path() + d).c_str(), 0755) == 0);
  write_file(root.file("dev/vduse/control"), "");
  CHECK(vb::preflight_host(plain, true, root.path()).empty());
  // vhost_vdpa only when a device attaches to it.
  const auto vhost = vb::preflight_host(parse_config(head + "    attach: vhost-vdpa\n", "t.yaml"), true, root.path());
  REQUIRE(vhost.size() == 1);
  CHECK(vhost[0].message.find("vhost_vdpa") != std::string::npos);
}

TEST_CASE("an empty device list is a daemon that serves nothing yet") {
  const vb::Config c = vb::parse_config("devices: []\n", "empty.yaml");
  CHECK(c.devices.empty());
}

TEST_CASE("drop-in files add devices, a name defined twice names both places, their errors are reported too") {
  vb::test::TempDir dir;
  const std::string main_file = dir.file("vduse-bridge.yaml");
  CHECK(vb::dropin_dir(main_file) == dir.file("vduse-bridge.d"));
  const auto memory = [](const std::string &name) {
    return "devices:\n  - name: " + name + "\n    backend:\n      type: memory\n      size: 1M\n";
  };
  write_file(main_file, memory("main0"));
  // No directory: just the main file.
  vb::Config c = vb::load_config(main_file);
  REQUIRE(c.devices.size() == 1);
  CHECK(c.devices[0].file == main_file);
  REQUIRE(::mkdir(vb::dropin_dir(main_file).c_str(), 0700) == 0);
  const std::string b = vb::dropin_dir(main_file) + "/b.yaml", a = vb::dropin_dir(main_file) + "/a.yaml";
  write_file(b, memory("dropb"));
  write_file(a, memory("dropa"));
  write_file(vb::dropin_dir(main_file) + "/notes.txt", "not a configuration");
  write_file(vb::dropin_dir(main_file) + "/.hidden.yaml", "devices: [");
  c = vb::load_config(main_file);
  REQUIRE(c.devices.size() == 3);
  CHECK(c.devices[1].name == "dropa"); // file-name order
  CHECK(c.devices[1].file == a);
  CHECK(c.devices[2].name == "dropb");

  write_file(b, memory("main0"));
  vb::ConfigCheck checked = vb::check_config(main_file);
  REQUIRE(checked.errors.size() == 1);
  CHECK(std::string(checked.errors[0].what()) ==
        b + ":2:0: name: the device 'main0' is defined already, in " + main_file + ":2");
  // A broken main file does not hide a broken drop-in.
  write_file(main_file, "devices:\n  - name: main0\n    queus: 2\n    backend:\n      type: memory\n      size: 1M\n");
  write_file(b, "devices:\n  - name: dropb\n    backend:\n      type: memory\n      size: lots\n");
  checked = vb::check_config(main_file);
  REQUIRE(checked.errors.size() == 2);
  CHECK(std::string(checked.errors[0].what()).starts_with(main_file + ":3:"));
  CHECK(std::string(checked.errors[1].what()).starts_with(b + ":5:"));
  CHECK_THROWS_AS(vb::load_config(main_file), ConfigError);
}

TEST_CASE("busy-poll-us: off by default, microseconds up to 10000, nothing else") {
  const std::string base = "devices:\n  - name: d\n    backend: {type: memory, size: 1M}\n";
  CHECK(vb::parse_config(base, "t.yaml").devices[0].busy_poll.count() == 0);
  CHECK(vb::parse_config(base + "    busy-poll-us: 50\n", "t.yaml").devices[0].busy_poll.count() == 50);
  CHECK_THROWS_WITH_AS(vb::parse_config(base + "    busy-poll-us: 10001\n", "t.yaml"),
                       doctest::Contains("t.yaml:4:19: devices[0].busy-poll-us:"), vb::ConfigError);
  CHECK_THROWS_WITH_AS(vb::parse_config(base + "    busy-poll-us: 50us\n", "t.yaml"),
                       doctest::Contains("devices[0].busy-poll-us:"), vb::ConfigError);
  // A different window is a different device setting (a reload recreates the device).
  auto a = vb::parse_config(base, "t.yaml").devices[0];
  auto b = vb::parse_config(base + "    busy-poll-us: 50\n", "t.yaml").devices[0];
  CHECK_FALSE(a.same_settings(b));
}
