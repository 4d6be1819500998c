// libFuzzer target: a Hugging Face tokenizer.json with the tokenizer_config.json and config.json
// beside it, through read_hf_tokenizer_text (the code read_hf_tokenizer runs on the files). The
// input is the three texts separated by NUL bytes (missing parts: no such file). It must either
// give a vocabulary of exactly the model's size with special-token ids inside it, or throw
// dashlm::Error; anything else is a bug.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/error.h"
#include "model/metadata.h"
#include "model/model_file.h"

namespace {
// The model's vocabulary: the loader always knows it from the embedding (or config.json).
constexpr int64_t kVocab = 512;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view parts[3];
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  for (int i = 0; i < 3; ++i) {
    const size_t nul = i < 2 ? rest.find('\0') : std::string_view::npos;
    parts[i] = rest.substr(0, nul);
    if (nul == std::string_view::npos) break;
    rest.remove_prefix(nul + 1);
  }
  dashlm::Metadata meta;
  meta.set("general.architecture", dashlm::MetaValue::of_string("llama"));
  try {
    dashlm::read_hf_tokenizer_text(parts[0], parts[1], parts[2], "fuzz/tokenizer.json", meta, kVocab);
  } catch (const dashlm::Error&) {
    return 0;  // rejected cleanly
  }
  const dashlm::MetaValue* tokens = meta.find("tokenizer.ggml.tokens");
  const dashlm::MetaValue* types = meta.find("tokenizer.ggml.token_type");
  if (!tokens || !tokens->is_array() || static_cast<int64_t>(tokens->array().size()) != kVocab) std::abort();
  if (!types || !types->is_array() || types->array().size() != tokens->array().size()) std::abort();
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.padding_token_id", "tokenizer.ggml.unknown_token_id"}) {
    if (const auto id = meta.get_int(key); id && (*id < 0 || *id >= kVocab)) std::abort();
  }
  return 0;
}
