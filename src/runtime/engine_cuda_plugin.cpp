// The entry point of the CUDA engine module (see engine_plugin.h).
#include <cstdio>
#include <exception>

#include "runtime/engine_cuda.h"
#include "runtime/engine_plugin.h"

extern "C" __attribute__((visibility("default"))) dashlm::InferenceEngine* dashlm_cuda_make_engine(const dashlm::Model* model,
                                                                                                   int64_t n_ctx, int cache_type,
                                                                                                   char* err, size_t err_len) {
  try {
    std::string why;
    if (!dashlm::cuda_available(&why)) {
      std::snprintf(err, err_len, "%s", why.c_str());
      return nullptr;
    }
    return new dashlm::CudaEngine(*model, n_ctx, static_cast<dashlm::CacheType>(cache_type));
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return nullptr;
  }
}
