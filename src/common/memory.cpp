#include "common/memory.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"

namespace dashlm {

namespace {

// The kB value of a "Key: N kB" line of /proc/meminfo, 0 when absent.
uint64_t meminfo_kb(const char* key) {
  std::ifstream in("/proc/meminfo");
  std::string line;
  const std::string prefix = std::string(key) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) {
      std::istringstream s(line.substr(prefix.size()));
      uint64_t kb = 0;
      s >> kb;
      return kb;
    }
  }
  return 0;
}

// A number from a one-line file (cgroup v2's memory.max may say "max"); nothing when absent.
bool read_number(const char* path, uint64_t& out) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word.empty() || word.find_first_not_of("0123456789") != std::string::npos) return false;
  try {
    out = std::stoull(word);
  } catch (...) {
    return false;
  }
  return true;
}

}  // namespace

uint64_t available_memory_bytes() {
  uint64_t avail = meminfo_kb("MemAvailable") * 1024;
  if (avail == 0) {
    const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    avail = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : std::numeric_limits<uint64_t>::max();
  }
  uint64_t max = 0, current = 0;
  if (read_number("/sys/fs/cgroup/memory.max", max) && read_number("/sys/fs/cgroup/memory.current", current)) {
    avail = std::min(avail, max > current ? max - current : 0);
  }
  rlimit as{};
  if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
    // What the address space already holds (the model's mapping included): statm's first field.
    std::ifstream statm("/proc/self/statm");
    uint64_t pages = 0;
    statm >> pages;
    const uint64_t used = pages * static_cast<uint64_t>(std::max(1L, sysconf(_SC_PAGESIZE)));
    const auto limit = static_cast<uint64_t>(as.rlim_cur);
    avail = std::min(avail, limit > used ? limit - used : 0);
  }
  return avail;
}

std::string format_bytes(uint64_t bytes) {
  const double b = static_cast<double>(bytes);
  if (bytes >= (uint64_t{1} << 30)) return fmt::format("{:.1f} GiB", b / (1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return fmt::format("{:.1f} MiB", b / (1 << 20));
  if (bytes >= (uint64_t{1} << 10)) return fmt::format("{:.1f} KiB", b / (1 << 10));
  return fmt::format("{} bytes", bytes);
}

void check_memory(uint64_t bytes, std::string_view what) {
  const uint64_t avail = available_memory_bytes();
  if (bytes > avail) {
    fail("{} need {} ({} bytes), but only {} ({} bytes) of memory is available", what, format_bytes(bytes), bytes,
         format_bytes(avail), avail);
  }
}

}  // namespace dashlm
