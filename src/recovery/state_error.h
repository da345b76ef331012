// Errors of the recovery state: a state file that cannot be used as it is. Thrown only by
// set-up code (opening the file, recovering a queue); the data path never throws.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace vb::recovery {

// The file is unreadable, of another format or version, in use, or corrupt. what() names the file
// (and the queue) and says what is wrong.
class StateError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// The file describes another device than the configuration: a restarted daemon must not serve a
// device the kernel created with other parameters. what() names every field that differs:
// "...: queues: the state file says 2, the configuration 4".
class IdentityMismatch : public StateError {
public:
  struct Difference {
    std::string field;    // "queues"
    std::string in_file;  // "2"
    std::string expected; // "4"
  };
  IdentityMismatch(const std::string &path, std::vector<Difference> differences);
  const std::vector<Difference> &differences() const noexcept { return differences_; }

private:
  std::vector<Difference> differences_;
};

} // namespace vb::recovery
