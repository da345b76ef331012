#include "common/secret_file.h"

#include <cstdio>
#include <stdexcept>
#include <sys/stat.h>

namespace vb {

void check_secret_file(const std::string &path, const std::string &what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    return;
  if ((st.st_mode & (S_IROTH | S_IWOTH)) == 0)
    return;
  char mode[8];
  (void)std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  throw std::runtime_error("the " + what + " " + path + " is " + ((st.st_mode & S_IROTH) ? "readable" : "writable") +
                           " by every user (mode " + mode + "): a secret must not be; run chmod o-rwx " + path);
}

} // namespace vb
