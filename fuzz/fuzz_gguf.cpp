// libFuzzer target: parse_gguf on arbitrary bytes must either succeed with every tensor inside
// the input, or throw dashlm::Error. Anything else (a crash, an ASan report, another exception,
// a huge allocation, a hang) is a bug.
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "model/model_file.h"

namespace {

// Reads every byte of every tensor so that AddressSanitizer checks the whole range.
void touch_tensors(const dashlm::ModelFile& f, const uint8_t* data, size_t size) {
  volatile uint8_t sink = 0;
  for (const dashlm::TensorInfo& t : f.tensors) {
    if (t.data < data || t.nbytes > size || t.data + t.nbytes > data + size) std::abort();
    if (t.n_elements() < 0) std::abort();
    for (size_t i = 0; i < t.nbytes; ++i) sink = sink ^ t.data[i];
    (void)t.shape_str();
  }
  (void)sink;
}

// Runs the metadata accessors the rest of dashlm uses; wrong types must be dashlm::Errors.
void touch_metadata(const dashlm::Metadata& m) {
  for (const auto& [key, value] : m.all()) {
    (void)value.to_display();
    try {
      (void)m.get_int(key);
    } catch (const dashlm::Error&) {
    }
    try {
      (void)m.get_float(key);
    } catch (const dashlm::Error&) {
    }
    try {
      (void)m.get_bool(key);
    } catch (const dashlm::Error&) {
    }
    try {
      (void)m.get_string(key);
    } catch (const dashlm::Error&) {
    }
    try {
      (void)m.get_string_array(key);
    } catch (const dashlm::Error&) {
    }
    try {
      (void)m.get_float_array(key);
    } catch (const dashlm::Error&) {
    }
    try {
      (void)m.get_int_array(key);
    } catch (const dashlm::Error&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto f = dashlm::parse_gguf(data, size, "fuzz.gguf");
    touch_tensors(*f, data, size);
    touch_metadata(f->meta);
  } catch (const dashlm::Error&) {
    // Rejected cleanly.
  }
  return 0;
}
