// Wall-clock timing for reports: one clock and one way to read milliseconds off it.
#pragma once
#include <chrono>

namespace dashlm {

using Clock = std::chrono::steady_clock;

inline double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}
inline double ms_since(Clock::time_point t0) { return ms_between(t0, Clock::now()); }

}  // namespace dashlm
