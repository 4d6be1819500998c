#include "common/lists.h"

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "common/error.h"

namespace dashlm {

std::vector<std::string> split_list(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    const size_t a = item.find_first_not_of(" \t");
    if (a == std::string::npos) continue;
    out.push_back(item.substr(a, item.find_last_not_of(" \t") - a + 1));
  }
  return out;
}

std::vector<int64_t> parse_lengths(const std::string& s, const std::string& what) {
  const std::string pre = what.empty() ? "" : what + ": ";
  std::vector<int64_t> out;
  for (std::string item : split_list(s)) {
    double mult = 1;
    if (item.back() == 'k' || item.back() == 'K') {
      mult = 1024;
      item.pop_back();
    }
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    const auto n = static_cast<int64_t>(std::llround(v * mult));
    if (item.empty() || *end != '\0' || !(v > 0) || n <= 0 || n > (int64_t{1} << 30)) fail("{}'{}' is not a positive token count", pre, item);
    out.push_back(n);
  }
  if (out.empty()) fail("{}give at least one length", pre);
  return out;
}

}  // namespace dashlm
