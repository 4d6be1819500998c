// libFuzzer target: a Hugging Face config.json, through read_hf_config_text (the code the
// safetensors loader runs on the config.json beside the weights). It must either give the
// metadata of an architecture dashlm knows, with a positive shape, or throw dashlm::Error.
// Anything else (a crash, a stack overflow on deep nesting, another exception such as a JSON
// type error, a hang) is a bug.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/error.h"
#include "model/metadata.h"
#include "model/model_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dashlm::Metadata meta;
  try {
    dashlm::read_hf_config_text(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json", meta);
  } catch (const dashlm::Error&) {
    return 0;  // rejected cleanly
  }
  const auto arch = meta.get_string("general.architecture");
  if (!arch || (*arch != "llama" && *arch != "qwen2" && *arch != "gemma3")) std::abort();
  for (const char* key : {".block_count", ".embedding_length", ".attention.head_count", ".attention.head_count_kv"}) {
    const auto v = meta.get_int(*arch + key);
    if (!v || *v <= 0) std::abort();
  }
  return 0;
}
