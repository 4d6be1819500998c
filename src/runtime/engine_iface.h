// The interface every inference engine offers (CPU Engine, CudaEngine), so frontends can pick a
// backend at run time: std::unique_ptr<InferenceEngine> e = ...; e->prefill(tokens, opt).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dashlm {

struct PrefillOptions;
struct ForwardStats;

class InferenceEngine {
 public:
  virtual ~InferenceEngine() = default;
  // Runs `tokens` at positions n_past() .. n_past()+T-1 through every layer, appends their keys
  // and values to the cache, and returns the logits of the last token.
  virtual std::vector<float> prefill(std::span<const int32_t> tokens, const PrefillOptions& opt, ForwardStats* stats) = 0;
  // One token at position n_past(): returns its logits.
  virtual std::vector<float> decode(int32_t token) = 0;
  virtual int64_t n_past() const = 0;
  virtual int64_t n_ctx() const = 0;
  // Forgets the cache contents (n_past() = 0, every slot valid again) so that one engine, its
  // weights and its cache allocation serve many prompts in turn.
  virtual void reset() = 0;
  // Keeps the first n positions of the cache (n <= n_past()) and forgets the rest, so that a
  // prompt sharing those n tokens with what the cache holds prefills only the tokens after them.
  // Slots a halting policy dropped among the first n stay dropped.
  virtual void truncate(int64_t n) = 0;
  // One line on the kernels this engine runs (instruction set, device, attention route), for
  // the CLI's report and JSON.
  virtual std::string kernels() const = 0;
};

}  // namespace dashlm
