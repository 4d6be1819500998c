// Whether floats are all finite, in one pass without an early exit (the compiler vectorises it:
// the CUDA decode step checks every logit of a large vocabulary on the host, and each step waits).
#pragma once
#include <cstdint>
#include <cstring>
#include <span>

namespace dashlm {

// False when any value is NaN or +-Inf (exponent bits all ones).
inline bool all_finite(std::span<const float> v) {
  uint32_t bad = 0;
  for (const float x : v) {
    uint32_t b;
    std::memcpy(&b, &x, sizeof b);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

}  // namespace dashlm
