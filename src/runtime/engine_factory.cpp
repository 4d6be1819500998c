#include "runtime/engine_factory.h"

#include "backends/error.h"
#include "runtime/engine.h"
#ifdef DASHLM_HAVE_CUDA
#include "runtime/engine_cuda.h"
#endif

namespace dashlm {

std::unique_ptr<InferenceEngine> make_engine(const Model& model, int64_t n_ctx, const std::string& backend) {
  if (backend == "cpu") return std::make_unique<Engine>(model, n_ctx);
  if (backend == "cuda") {
#ifdef DASHLM_HAVE_CUDA
    std::string why;
    if (!cuda_available(&why)) fail("--backend cuda: {}", why);
    return std::make_unique<CudaEngine>(model, n_ctx);
#else
    fail("--backend cuda: this dashlm was built without the CUDA backend (configure with -DDASHLM_CUDA=ON)");
#endif
  }
  fail("unknown backend '{}' (cpu, cuda)", backend);
}

}  // namespace dashlm
