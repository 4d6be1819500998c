// The one exception type of dashlm: a message meant for the user, one line.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace dashlm {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace dashlm
