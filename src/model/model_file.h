// A model file, whatever its format: metadata (GGUF keys) plus named tensors.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backends/dtype.h"
#include "model/metadata.h"

namespace dashlm {

struct TensorInfo {
  std::string name;            // GGUF naming: token_embd.weight, blk.3.attn_q.weight, ...
  DType type = DType::F32;
  std::vector<int64_t> ne;     // GGUF order: ne[0] is the contiguous (fastest) dimension
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  int64_t n_elements() const;
  int64_t rows() const;        // product of ne[1..]
  std::string shape_str() const;  // "[576, 49152]"
};

class ModelFile {
 public:
  std::string path;
  std::string format;          // "gguf", "safetensors", "llama2c"
  uint32_t format_version = 0; // GGUF version, 0 otherwise
  Metadata meta;
  std::vector<TensorInfo> tensors;

  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& need(const std::string& name) const;  // throws naming the tensor
  void add_tensor(TensorInfo t);                           // keeps the name index current
  // Keeps memory (a mapping, an owned buffer) alive as long as the file object.
  void keep_alive(std::shared_ptr<const void> owner) { owners_.push_back(std::move(owner)); }

 private:
  std::unordered_map<std::string, size_t> index_;
  std::vector<std::shared_ptr<const void>> owners_;
};

// Loaders. All throw dashlm::Error with a one-line message for anything malformed.
std::unique_ptr<ModelFile> load_gguf(const std::string& path);
// Parses a GGUF image in memory (used by load_gguf and by the fuzzer); does not copy tensor data.
std::unique_ptr<ModelFile> parse_gguf(const uint8_t* data, size_t size, const std::string& name);
// path: a .safetensors file, a model.safetensors.index.json, or a directory holding either;
// config.json (and tokenizer.json if present) are read from the same directory.
std::unique_ptr<ModelFile> load_safetensors(const std::string& path);
// Same, but with_tokenizer = false skips tokenizer.json (used when --tokenizer names another file).
std::unique_ptr<ModelFile> load_safetensors(const std::string& path, bool with_tokenizer);
// Parses one safetensors image in memory into tensors with HF names (used by the fuzzer).
std::unique_ptr<ModelFile> parse_safetensors(const uint8_t* data, size_t size, const std::string& name);
// The metadata a checkpoint's config.json gives (architecture, shape, RoPE), from its text:
// what load_safetensors does with config.json, without the file (used by the fuzzer).
void read_hf_config_text(std::string_view text, const std::string& name, Metadata& meta);
// llama2.c checkpoint plus its tokenizer (a llama2.c tokenizer.bin, or any file that
// apply_tokenizer_file accepts); the tokenizer's vocabulary size must equal the model's.
std::unique_ptr<ModelFile> load_llama2c(const std::string& path, const std::string& tokenizer_path);

// Tokenizer files. Each replaces every tokenizer.* key of meta with those read from the file.
// A llama2.c tokenizer.bin (int32 max_token_length, then per token: f32 score, i32 length,
// bytes); returns the number of tokens.
size_t read_llama2c_tokenizer(const std::string& path, Metadata& meta);
// A Hugging Face tokenizer.json of byte-level BPE; tokenizer_config.json and config.json beside
// it supply BOS/EOS and the chat template. The pre-tokenizer is chosen from
// general.architecture. n_vocab > 0 pads the vocabulary to the model's size with unused tokens.
void read_hf_tokenizer(const std::string& tokenizer_json_path, Metadata& meta, int64_t n_vocab);
// Same, from the texts of tokenizer.json, tokenizer_config.json and config.json (empty: absent);
// name stands for tokenizer.json's path in messages (used by the fuzzer).
void read_hf_tokenizer_text(std::string_view tokenizer_json, std::string_view tokenizer_config, std::string_view config,
                            const std::string& name, Metadata& meta, int64_t n_vocab);
// Picks the kind by content (GGUF: its tokenizer.* keys are copied; a JSON file: HF
// tokenizer.json; a folder: the tokenizer.json in it; otherwise a llama2.c tokenizer.bin) and
// checks the vocabulary against the rows of token_embd.weight.
void apply_tokenizer_file(ModelFile& file, const std::string& tokenizer_path);

// Picks the loader by content (GGUF magic, safetensors header, llama2.c header size check).
// tokenizer_path is needed for llama2.c files and optional otherwise (a tokenizer.json or a
// GGUF whose tokenizer is used instead of the model file's).
std::unique_ptr<ModelFile> open_model_file(const std::string& path, const std::string& tokenizer_path = "");

}  // namespace dashlm
