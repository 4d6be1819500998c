// The GPU's timeline of a piece of work, through CUPTI's activity API (the CUDA toolkit's
// profiling interface): every kernel, copy and memset it ran, with start and end on the GPU's
// clock. The benchmark uses it to say where a prefill's time goes beyond its kernels' sum (idle
// gaps, small kernels, copies) without an external profiler.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dashlm::bench {

struct GpuTrace {
  struct Item {
    std::string name;  // demangled kernel name, or "memcpy HtoD" / "memset" ...
    uint64_t start = 0, end = 0;  // ns, GPU clock
  };
  std::vector<Item> items;
};

// Runs work() with activity recording on; false with the reason when CUPTI cannot record.
bool trace_gpu(const std::function<void()>& work, GpuTrace* out, std::string* why);

}  // namespace dashlm::bench
