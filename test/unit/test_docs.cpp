// The manual pages cover what the program accepts: every configuration key the parser knows is
// described in vduse-bridge.yaml(5), every option --help lists is described in vduse-bridge(8).
#include "config/config.h"
#include "daemon/options.h"

#include <doctest/doctest.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

// The page's text with roff's escaped hyphens ("\-") made plain.
std::string man_page(const std::string &name) {
  std::ifstream f(std::string(VB_SOURCE_DIR) + "/man/" + name);
  REQUIRE_MESSAGE(f, "cannot read man/" << name);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  for (std::size_t at = 0; (at = text.find("\\-", at)) != std::string::npos;)
    text.replace(at, 2, "-");
  return text;
}

// roff macro arguments: words, or "quoted strings".
std::vector<std::string> macro_args(const std::string &line) {
  std::vector<std::string> args;
  std::size_t i = line.find(' ');
  while (i != std::string::npos && i < line.size()) {
    while (i < line.size() && line[i] == ' ')
      ++i;
    if (i >= line.size())
      break;
    if (line[i] == '"') {
      const std::size_t close = line.find('"', i + 1);
      args.push_back(line.substr(i + 1, close == std::string::npos ? std::string::npos : close - i - 1));
      i = close == std::string::npos ? close : close + 1;
    } else {
      const std::size_t end = line.find(' ', i);
      args.push_back(line.substr(i, end == std::string::npos ? std::string::npos : end - i));
      i = end;
    }
  }
  return args;
}

// Every term the page sets in bold: .B (all arguments), .BR/.BI (odd ones, counting from 1),
// .RB/.IB (even ones), and inline \fB...\f spans. Leading words of a bold argument count too
// ("control-timeout (duration...)").
std::set<std::string> bold_terms(const std::string &page) {
  std::set<std::string> terms;
  auto add = [&terms](const std::string &text) {
    std::istringstream words(text);
    for (std::string w; words >> w;)
      terms.insert(w);
  };
  std::istringstream lines(page);
  for (std::string line; std::getline(lines, line);) {
    const auto args = macro_args(line);
    const bool all = line.rfind(".B ", 0) == 0;
    const bool even = line.rfind(".BR ", 0) == 0 || line.rfind(".BI ", 0) == 0;
    const bool odd = line.rfind(".RB ", 0) == 0 || line.rfind(".IB ", 0) == 0;
    for (std::size_t i = 0; i < args.size(); ++i)
      if (all || (even && i % 2 == 0) || (odd && i % 2 == 1))
        add(args[i]);
    for (std::size_t at = 0; (at = line.find("\\fB", at)) != std::string::npos;) {
      const std::size_t end = line.find("\\f", at + 3);
      add(line.substr(at + 3, end == std::string::npos ? std::string::npos : end - at - 3));
      at += 3;
    }
  }
  return terms;
}

bool described(const std::string &page, const std::string &term) { return bold_terms(page).count(term) > 0; }

} // namespace

TEST_CASE("vduse-bridge.yaml(5) describes every configuration key") {
  const std::string page = man_page("vduse-bridge.yaml.5");
  const auto keys = vb::config_keys();
  CHECK(keys.size() > 20);
  for (const auto &key : keys) {
    CAPTURE(key);
    CHECK(described(page, key));
  }
}

TEST_CASE("vduse-bridge(8) describes every option that --help lists") {
  const std::string page = man_page("vduse-bridge.8");
  const std::string help = vb::usage_text();
  const std::regex option("(^|[ ,|\\[])(--[a-z][a-z-]*|-[a-zA-Z])\\b");
  int seen = 0;
  for (auto it = std::sregex_iterator(help.begin(), help.end(), option); it != std::sregex_iterator(); ++it) {
    const std::string opt = (*it)[2];
    CAPTURE(opt);
    CHECK(described(page, opt));
    ++seen;
  }
  CHECK(seen >= 8);
}
