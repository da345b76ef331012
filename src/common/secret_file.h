// Secret files (TLS PSK keys, private keys, CHAP passwords) must not be readable by every user
// on the machine: a key that anyone can read is not a secret, and a daemon that uses it quietly
// hides the mistake. Checked when the file is used, with a message saying how to fix it.
#pragma once

#include <string>

namespace vb {

// Throws std::runtime_error if path is readable or writable by others ("the tls-psk-file
// /etc/x is readable by every user (mode 0644): chmod o-rwx /etc/x"). A file that cannot be
// stat()ed is left to the code that opens it (which reports that better). what names the key.
void check_secret_file(const std::string &path, const std::string &what);

} // namespace vb
