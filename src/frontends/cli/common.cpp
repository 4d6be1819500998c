#include "frontends/cli/common.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"

namespace dashlm::cli {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("cannot read {}", path);
  return ss.str();
}

bool stderr_is_tty() { return isatty(STDERR_FILENO) == 1; }

void progress_bar(const char* label, int done, int total) {
  constexpr int kWidth = 30;
  const int filled = total > 0 ? done * kWidth / total : kWidth;
  fmt::print(stderr, "\r{} [{:=<{}}{:<{}}] {}/{}", label, "", filled, "", kWidth - filled, done, total);
  std::fflush(stderr);
}

void progress_clear() {
  fmt::print(stderr, "\r{:<70}\r", "");
  std::fflush(stderr);
}

}  // namespace dashlm::cli
