#include "runtime/engine_factory.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "common/error.h"
#include "runtime/dash/prefill.h"
#include "runtime/engine.h"
#include "runtime/engine_plugin.h"

namespace dashlm {

namespace {

// The CUDA engine module: $DASHLM_CUDA_MODULE, else the file next to the running executable.
dashlm_cuda_make_engine_fn cuda_entry() {
  static std::once_flag once;
  static dashlm_cuda_make_engine_fn entry = nullptr;
  static std::string error;
  std::call_once(once, [] {
    std::string path;
    if (const char* env = std::getenv("DASHLM_CUDA_MODULE"); env && *env) {
      path = env;
    } else {
      std::error_code ec;
      const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
      path = (ec ? std::filesystem::path(kCudaPluginFile) : exe.parent_path() / kCudaPluginFile).string();
    }
    if (!std::filesystem::exists(path)) {
      error = "this dashlm has no CUDA backend (" + path + " is missing; configure with -DDASHLM_CUDA=ON)";
      return;
    }
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      error = "cannot load " + path + ": " + (e ? e : "unknown error");
      return;
    }
    entry = reinterpret_cast<dashlm_cuda_make_engine_fn>(dlsym(h, kCudaPluginEntry));
    if (!entry) error = path + " has no entry point " + kCudaPluginEntry;
  });
  if (!entry) fail("--backend cuda: {}", error);
  return entry;
}

}  // namespace

void check_engine_fits(const Model& model, int64_t n_ctx, const std::string& backend) {
  if (backend == "cpu") {
    Engine::check_memory_for(model, n_ctx);
  } else {
    check_context_size(n_ctx);
  }
}

std::unique_ptr<InferenceEngine> make_engine(const Model& model, int64_t n_ctx, const std::string& backend) {
  check_context_size(n_ctx);
  if (backend == "cpu") return std::make_unique<Engine>(model, n_ctx);
  if (backend == "cuda") {
    char err[1024] = {0};
    InferenceEngine* e = cuda_entry()(&model, n_ctx, err, sizeof(err));
    if (!e) fail("--backend cuda: {}", err);
    return std::unique_ptr<InferenceEngine>(e);
  }
  fail("unknown backend '{}' (cpu, cuda)", backend);
}

InferenceEngine& EngineSlot::get(int64_t n_ctx) {
  if (engine_ && engine_->n_ctx() >= n_ctx) {
    engine_->reset();
  } else {
    engine_.reset();  // free the old cache before allocating the larger one
    engine_ = make_engine(model_, n_ctx, backend_);
  }
  return *engine_;
}

}  // namespace dashlm
