// Picks the engine for a backend name ("cpu", "cuda") at run time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "backends/cpu/ops.h"
#include "model/model.h"
#include "runtime/engine_iface.h"
#include "runtime/kv_type.h"

namespace dashlm {

// The CPU KV cache's element type when none is asked for (--kv-type): f16, chosen by measurement
// (docs/PERFORMANCE.md: half the cache memory, faster decoding after long prompts, prefill speed
// within noise of f32). The float32 cache remains the exactness oracle (--kv-type f32).
inline constexpr cpu::KvType kDefaultKvType = cpu::KvType::F16;
// The CUDA cache's when none is asked for: bf16 (fp8 halves the bytes a decode step reads from the
// cache; docs/PERFORMANCE.md has what that pays and what it costs).
inline constexpr CacheType kDefaultCudaCacheType = CacheType::BF16;
// "f32", "f16", "bf16", "fp8" to a type; throws naming the choices for anything else.
CacheType parse_cache_type(const std::string& name);
const char* cache_type_name(CacheType t);  // "default" for CacheType::Default
// The type the backend's engine keeps for t: Default becomes the backend's default; a type the
// backend lacks throws, naming the backend's choices.
CacheType resolve_cache_type(CacheType t, const std::string& backend);
// The same for a --kv-type value ("": the backend's default; an unknown name throws).
CacheType resolve_cache_type(const std::string& name, const std::string& backend);
// The CPU engine's type for t (Default: kDefaultKvType); throws for bf16 and fp8.
cpu::KvType cpu_kv_type(CacheType t);

// Throws dashlm::Error for an unknown backend, or "cuda" when this build has no CUDA backend or
// no device is usable (the message says why), or a cache type the backend lacks.
std::unique_ptr<InferenceEngine> make_engine(const Model& model, int64_t n_ctx, const std::string& backend,
                                             CacheType kv = CacheType::Default);
// What make_engine checks before it allocates, for callers that prepare a long prompt first: the
// context's range, and on the CPU whether its cache and buffers fit the memory available.
void check_engine_fits(const Model& model, int64_t n_ctx, const std::string& backend, CacheType kv = CacheType::Default);

// One engine serving many prompts in turn: created on first use, recreated only when a prompt
// needs a larger cache, reset between prompts. Weights are loaded (on the GPU: converted and
// uploaded) once, not once per prompt.
class EngineSlot {
 public:
  EngineSlot(const Model& model, std::string backend, CacheType kv = CacheType::Default)
      : model_(model), backend_(std::move(backend)), kv_(kv) {}
  // An engine with an empty cache of at least n_ctx slots.
  InferenceEngine& get(int64_t n_ctx);
  const Model& model() const { return model_; }

 private:
  const Model& model_;
  std::string backend_;
  CacheType kv_;
  std::unique_ptr<InferenceEngine> engine_;
};

}  // namespace dashlm
