// Next-token choice: greedy, or sampled with temperature, top-k and top-p (nucleus), seeded.
#pragma once
#include <cstdint>
#include <random>
#include <span>

namespace dashlm {

struct SamplerParams {
  float temperature = 0.f;  // <= 0: greedy (argmax)
  int top_k = 40;           // <= 0: all tokens
  float top_p = 0.95f;      // 1: no nucleus cut
  uint64_t seed = 0;
  // Throws for a temperature that is not finite or a top-p outside (0, 1] (NaN included).
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerParams& p);
  int32_t sample(std::span<const float> logits);

 private:
  SamplerParams p_;
  std::mt19937_64 rng_;
};

int32_t argmax(std::span<const float> logits);

}  // namespace dashlm
