// The forward pass on an NVIDIA GPU (Hopper), with the same interface and the same semantics as
// the CPU Engine (engine.h). The prefill's layer loop, halting included, is the backend-neutral
// driver (dash/prefill.h); this engine is its LayerExecutor: active tokens gathered into a dense
// batch on the device, retained or dropped K/V of halted tokens, the deltas copied back only
// where a policy on the host reads them (one float per active token), topk ranked on the device.
//
// Weights live on the device in bf16 (dequantized from the model file at load by the CPU
// dequantizer; norm weights and biases in float32); the residual stream is float32, GEMMs run on
// cuBLASLt (bf16 in, fp32 accumulate), attention through cuDNN or dashlm's flash kernel, the KV
// cache is bf16 or fp8 (e4m3 with a scale per slot and KV head, cuda_ops.h's Fp8Kv: the decode
// attention reads it as it is, the prefill's attention a layer's slots dequantized into bf16). A
// decode step is replayed from a CUDA graph.
// Compiled only with DASHLM_CUDA (DASHLM_HAVE_CUDA is defined then).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/dash/prefill.h"
#include "runtime/engine_iface.h"
#include "runtime/kv_type.h"

namespace dashlm {

// False, with the reason in *why, when no usable CUDA device or driver is present.
bool cuda_available(std::string* why = nullptr);

class CudaEngine final : public InferenceEngine {
 public:
  // Uploads the model's weights (converted to bf16) and allocates an n_ctx-token KV cache of
  // `cache` (BF16, FP8; Default: BF16; others throw).
  CudaEngine(const Model& model, int64_t n_ctx, CacheType cache = CacheType::BF16);
  // Benchmarks: a model of these hyperparameters with random bf16 weights generated on the device
  // (uniform, std 0.02; norm weights 1; biases std 0.02), no file and no tokenizer needed.
  CudaEngine(const HParams& hp, int64_t n_ctx, uint64_t seed = 1, CacheType cache = CacheType::BF16);
  ~CudaEngine() override;
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  std::vector<float> prefill(std::span<const int32_t> tokens, const PrefillOptions& opt = {},
                             ForwardStats* stats = nullptr) override;
  // One token after the cache: recorded into a CUDA graph on the second step after a prefill
  // and replayed from then on (DASHLM_CUDA_GRAPHS=0 or set_cuda_graphs(false): the same
  // launches, each step run as it is).
  std::vector<float> decode(int32_t token) override;
  void set_cuda_graphs(bool on);
  int64_t n_past() const override { return n_past_; }
  int64_t n_ctx() const override { return n_ctx_; }
  const HParams& hp() const { return hp_; }

  // Forgets the cache contents (n_past = 0, every slot valid again): benchmarks repeat prefills.
  void reset() override;
  void truncate(int64_t n) override;
  std::string kernels() const override;
  CacheType cache_type() const;
  // Tests: the cache of layer il as float32 (n_ctx x kv_dim each, an fp8 cache dequantized) and its
  // validity mask.
  void read_cache(int il, std::vector<float>* k, std::vector<float>* v, std::vector<uint8_t>* valid) const;
  // Bytes of device memory held (weights, cache, scratch).
  size_t device_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  HParams hp_;
  int64_t n_ctx_ = 0;
  int64_t n_past_ = 0;
};

}  // namespace dashlm
