// The CUDA engine lives in a loadable module (libdashlm-cuda.so, built next to the dashlm
// executable when DASHLM_CUDA is ON), so that a CPU run never loads the CUDA runtime and cuBLAS:
// linking them into the executable added about 200 MiB of resident memory to every process, CPU
// runs included. make_engine() opens the module on the first `--backend cuda`.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dashlm {
class InferenceEngine;
class Model;
}  // namespace dashlm

extern "C" {
// Creates a CudaEngine for `model` with an n_ctx-token cache of cache_type (a dashlm::CacheType,
// BF16 or FP8); on failure returns null and writes the reason (no device, out of memory, ...) into err.
typedef dashlm::InferenceEngine* (*dashlm_cuda_make_engine_fn)(const dashlm::Model* model, int64_t n_ctx, int cache_type,
                                                                char* err, size_t err_len);
}

namespace dashlm {
inline constexpr const char* kCudaPluginFile = "libdashlm-cuda.so";
inline constexpr const char* kCudaPluginEntry = "dashlm_cuda_make_engine";
}  // namespace dashlm
