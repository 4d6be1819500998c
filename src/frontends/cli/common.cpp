#include "frontends/cli/common.h"

#include <unistd.h>

#include <cstdio>
#include <algorithm>
#include <thread>

#include <fmt/format.h>

#include "common/error.h"

namespace dashlm::cli {

size_t prompt_file_cap(int64_t n_ctx) { return static_cast<size_t>(std::max<int64_t>(n_ctx, 1)) * 64; }

int resolve_threads(int requested) {
  if (requested < 0 || requested > kMaxThreads) fail("--threads must be between 1 and {} (0: all cores), got {}", kMaxThreads, requested);
  return requested > 0 ? requested : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
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
