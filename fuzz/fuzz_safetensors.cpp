// libFuzzer target: parse_safetensors on arbitrary bytes must either succeed with every tensor
// inside the input, or throw dashlm::Error. Anything else (a crash, an ASan report, another
// exception such as a JSON type error, a huge allocation, a hang) is a bug.
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "model/model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = dashlm::parse_safetensors(data, size, "fuzz.safetensors");
    volatile uint8_t sink = 0;
    for (const dashlm::TensorInfo& t : f->tensors) {
      if (t.data < data || t.nbytes > size || t.data + t.nbytes > data + size) std::abort();
      if (t.n_elements() < 0) std::abort();
      for (size_t i = 0; i < t.nbytes; ++i) sink = sink ^ t.data[i];
      (void)t.shape_str();
    }
    (void)sink;
  } catch (const dashlm::Error&) {
    // Rejected cleanly.
  }
  return 0;
}
