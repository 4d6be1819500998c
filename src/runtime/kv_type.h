// The KV cache's element type, as --kv-type names it. Each engine keeps its own set: the CPU
// engine f32 or f16 (default f16, runtime/engine_factory.h says why), the CUDA engine bf16 or fp8
// (default bf16; fp8 is e4m3 with a scale per slot and KV head, backends/cuda/cuda_ops.h).
#pragma once
#include <cstdint>

namespace dashlm {

enum class CacheType : uint8_t { Default = 0, F32, F16, BF16, FP8 };

}  // namespace dashlm
