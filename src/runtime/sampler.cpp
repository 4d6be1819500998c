#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "common/error.h"

namespace dashlm {

void SamplerParams::validate() const {
  if (!(top_p > 0.f && top_p <= 1.f)) fail("top-p must be in (0, 1], got {}", top_p);
  if (!std::isfinite(temperature)) fail("temperature must be finite, got {}", temperature);
}

int32_t argmax(std::span<const float> logits) {
  // First maximum wins, as in llama.cpp's greedy sampler.
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {
  p.validate();
}

int32_t Sampler::sample(std::span<const float> logits) {
  if (p_.temperature <= 0.f) return argmax(logits);
  const auto n = static_cast<int32_t>(logits.size());
  std::vector<int32_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  const int32_t k = p_.top_k > 0 ? std::min(p_.top_k, n) : n;
  // The k largest logits, in descending order (ties: lower id first, so runs are reproducible).
  const auto by_logit = [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)] ||
           (logits[static_cast<size_t>(a)] == logits[static_cast<size_t>(b)] && a < b);
  };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
  idx.resize(static_cast<size_t>(k));
  std::vector<double> prob(idx.size());
  const double mx = logits[static_cast<size_t>(idx[0])];
  double sum = 0;
  for (size_t i = 0; i < idx.size(); ++i) {
    prob[i] = std::exp((logits[static_cast<size_t>(idx[i])] - mx) / p_.temperature);
    sum += prob[i];
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  size_t keep = idx.size();
  if (p_.top_p < 1.f) {
    double acc = 0;
    for (size_t i = 0; i < idx.size(); ++i) {
      acc += prob[i] / sum;
      if (acc >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  const double total = std::accumulate(prob.begin(), prob.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
  std::uniform_real_distribution<double> uni(0.0, total);
  double r = uni(rng_);
  for (size_t i = 0; i < keep; ++i) {
    r -= prob[i];
    if (r <= 0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace dashlm
