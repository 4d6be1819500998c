// Picks the engine for a backend name ("cpu", "cuda") at run time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "model/model.h"
#include "runtime/engine_iface.h"

namespace dashlm {

// Throws dashlm::Error for an unknown backend, or "cuda" when this build has no CUDA backend or
// no device is usable (the message says why).
std::unique_ptr<InferenceEngine> make_engine(const Model& model, int64_t n_ctx, const std::string& backend);
// What make_engine checks before it allocates, for callers that prepare a long prompt first: the
// context's range, and on the CPU whether its cache and buffers fit the memory available.
void check_engine_fits(const Model& model, int64_t n_ctx, const std::string& backend);

// One engine serving many prompts in turn: created on first use, recreated only when a prompt
// needs a larger cache, reset between prompts. Weights are loaded (on the GPU: converted and
// uploaded) once, not once per prompt.
class EngineSlot {
 public:
  EngineSlot(const Model& model, std::string backend) : model_(model), backend_(std::move(backend)) {}
  // An engine with an empty cache of at least n_ctx slots.
  InferenceEngine& get(int64_t n_ctx);
  const Model& model() const { return model_; }

 private:
  const Model& model_;
  std::string backend_;
  std::unique_ptr<InferenceEngine> engine_;
};

}  // namespace dashlm
