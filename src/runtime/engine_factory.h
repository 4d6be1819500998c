// Picks the engine for a backend name ("cpu", "cuda") at run time.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "model/model.h"
#include "runtime/engine_iface.h"

namespace dashlm {

// Throws dashlm::Error for an unknown backend, or "cuda" when this build has no CUDA backend or
// no device is usable (the message says why).
std::unique_ptr<InferenceEngine> make_engine(const Model& model, int64_t n_ctx, const std::string& backend);

}  // namespace dashlm
