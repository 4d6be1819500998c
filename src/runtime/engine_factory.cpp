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

// Asks the NVIDIA driver (libcuda, opened here) whether there is a device at all, before the
// module loads the CUDA runtime, which on a machine without a GPU (and so without a driver)
// reports only "insufficient driver version". Empty when there is one, else why not.
std::string cuda_device_missing() {
  void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) return "no CUDA device: the NVIDIA driver (libcuda.so.1) is not installed on this machine";
  using InitFn = int (*)(unsigned);
  using CountFn = int (*)(int*);
  const auto init = reinterpret_cast<InitFn>(dlsym(h, "cuInit"));
  const auto count = reinterpret_cast<CountFn>(dlsym(h, "cuDeviceGetCount"));
  if (!init || !count) return "no CUDA device: libcuda.so.1 lacks cuInit/cuDeviceGetCount";
  constexpr int kNoDevice = 100;  // CUDA_ERROR_NO_DEVICE
  const int e = init(0);
  if (e == kNoDevice) return "no CUDA device: the NVIDIA driver sees no GPU";
  if (e != 0) return fmt::format("no usable CUDA device: the NVIDIA driver's cuInit failed (CUresult {})", e);
  int n = 0;
  if (count(&n) != 0 || n <= 0) return "no CUDA device: the NVIDIA driver sees no GPU";
  return "";  // the driver stays loaded: the CUDA engine uses it
}

}  // namespace

CacheType parse_cache_type(const std::string& name) {
  if (name == "f32") return CacheType::F32;
  if (name == "f16") return CacheType::F16;
  if (name == "bf16") return CacheType::BF16;
  if (name == "fp8") return CacheType::FP8;
  fail("unknown KV cache type '{}' (f32, f16, bf16, fp8)", name);
}

const char* cache_type_name(CacheType t) {
  switch (t) {
    case CacheType::F32: return "f32";
    case CacheType::F16: return "f16";
    case CacheType::BF16: return "bf16";
    case CacheType::FP8: return "fp8";
    case CacheType::Default: break;
  }
  return "default";
}

CacheType resolve_cache_type(CacheType t, const std::string& backend) {
  if (backend == "cpu") {
    if (t == CacheType::Default) return kDefaultKvType == cpu::KvType::F16 ? CacheType::F16 : CacheType::F32;
    if (t == CacheType::F32 || t == CacheType::F16) return t;
    fail("--kv-type {}: the CPU engine keeps f32 or f16 caches ({} is for --backend cuda)", cache_type_name(t), cache_type_name(t));
  }
  if (backend == "cuda") {
    if (t == CacheType::Default) return kDefaultCudaCacheType;
    if (t == CacheType::BF16 || t == CacheType::FP8) return t;
    fail("--kv-type {}: the CUDA engine keeps bf16 or fp8 caches", cache_type_name(t));
  }
  fail("unknown backend '{}' (cpu, cuda)", backend);
}

CacheType resolve_cache_type(const std::string& name, const std::string& backend) {
  return resolve_cache_type(name.empty() ? CacheType::Default : parse_cache_type(name), backend);
}

cpu::KvType cpu_kv_type(CacheType t) {
  return resolve_cache_type(t, "cpu") == CacheType::F32 ? cpu::KvType::F32 : cpu::KvType::F16;
}

void check_engine_fits(const Model& model, int64_t n_ctx, const std::string& backend, CacheType kv) {
  if (backend == "cpu") {
    Engine::check_memory_for(model, n_ctx, cpu_kv_type(kv));
  } else {
    (void)resolve_cache_type(kv, backend);
    check_context_size(n_ctx);
  }
}

std::unique_ptr<InferenceEngine> make_engine(const Model& model, int64_t n_ctx, const std::string& backend, CacheType kv) {
  check_context_size(n_ctx);
  if (backend == "cpu") return std::make_unique<Engine>(model, n_ctx, cpu_kv_type(kv));
  if (backend == "cuda") {
    const CacheType type = resolve_cache_type(kv, backend);
    static const std::string missing = cuda_device_missing();
    if (!missing.empty()) fail("--backend cuda: {}", missing);
    char err[1024] = {0};
    InferenceEngine* e = cuda_entry()(&model, n_ctx, static_cast<int>(type), err, sizeof(err));
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
    engine_ = make_engine(model_, n_ctx, backend_, kv_);
  }
  return *engine_;
}

}  // namespace dashlm
