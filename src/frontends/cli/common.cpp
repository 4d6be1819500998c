#include "frontends/cli/common.h"

#include <unistd.h>

#include <cstdio>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"

namespace dashlm::cli {

std::string read_text_file(const std::string& path, size_t max_bytes) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) fail("cannot open {}: no such file", path);
  if (!std::filesystem::is_regular_file(st)) fail("{} is not a regular file", path);
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) fail("cannot read {}", path);
  if (size > max_bytes) fail("{} holds {} bytes, more than a prompt can use here ({} bytes; a larger --ctx allows more)", path, size, max_bytes);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path);
  std::string s(static_cast<size_t>(size), '\0');
  in.read(s.data(), static_cast<std::streamsize>(size));
  if (in.bad()) fail("cannot read {}", path);
  s.resize(static_cast<size_t>(in.gcount()));
  return s;
}

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
