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

// The pre-flight check of a secret file (vduse-bridge --check), stricter than the one above:
// what is wrong with it, or "" when nothing is. It must exist, be a regular file (symbolic
// links followed), be readable by this process, and be neither readable nor writable by its
// group or by other users ("is readable by its group (mode 0640): a secret must not be; run
// chmod go-rwx PATH"). Never throws for I/O errors; never reads the secret.
std::string secret_file_problem(const std::string &path);

// What is wrong with a path whose directory must exist (a unix socket's, a backing file's): ""
// when the directory exists and is a directory, else "its directory /run/nbd does not exist".
std::string parent_directory_problem(const std::string &path);

} // namespace vb
