// ModelFile basics and the format dispatch of open_model_file.
#include "model/model_file.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"

namespace dashlm {

// --- TensorInfo --------------------------------------------------------------

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

int64_t TensorInfo::rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < ne.size(); ++i) n *= ne[i];
  return n;
}

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ne[i]);
  }
  return s + "]";
}

// --- ModelFile ---------------------------------------------------------------

const TensorInfo* ModelFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors[it->second];
}

const TensorInfo& ModelFile::need(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) fail("{}: model file lacks tensor {}", path, name);
  return *t;
}

void ModelFile::add_tensor(TensorInfo t) {
  if (index_.count(t.name)) fail("{}: duplicate tensor {}", path, t.name);
  index_.emplace(t.name, tensors.size());
  tensors.push_back(std::move(t));
}

// --- format detection ----------------------------------------------------------

namespace {

namespace fs = std::filesystem;

enum class FileKind { GGUF, Safetensors, Json, Other };

// The first bytes of a file (fewer if it is shorter). Throws if it cannot be read.
std::string read_prefix(const std::string& path, size_t n, const char* what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("{} {} does not exist", what, path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {} {}", what, path);
  std::string buf(n, '\0');
  in.read(buf.data(), static_cast<std::streamsize>(n));
  buf.resize(static_cast<size_t>(in.gcount()));
  return buf;
}

FileKind sniff(const std::string& path, const char* what) {
  const std::string head = read_prefix(path, 64, what);
  if (head.size() >= 4 && std::memcmp(head.data(), "GGUF", 4) == 0) return FileKind::GGUF;
  // safetensors: u64 little-endian header length, then the JSON header's '{'.
  if (head.size() >= 9 && head[8] == '{') {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(head[static_cast<size_t>(i)]);
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    if (!ec && n >= 2 && n <= size - 8) return FileKind::Safetensors;
  }
  const size_t first = head.find_first_not_of(" \t\r\n");
  // A JSON header's opening after 8 bytes that do not start JSON: a safetensors file whose
  // header length is wrong (load_safetensors says so), not a llama2.c checkpoint.
  if (head.size() >= 10 && head[8] == '{' && (head[9] == '"' || head[9] == '}') && first != std::string::npos &&
      head[first] != '{' && !path.ends_with(".json")) {
    return FileKind::Safetensors;
  }
  if (path.ends_with(".json") || (first != std::string::npos && head[first] == '{')) return FileKind::Json;
  return FileKind::Other;
}

// Rows of the token embedding (the model's vocabulary size), 0 if unknown.
int64_t model_vocab_rows(const ModelFile& f) {
  if (const TensorInfo* t = f.find("token_embd.weight"); t && t->ne.size() == 2) return t->ne[1];
  if (auto arch = f.meta.get_string("general.architecture")) {
    if (auto v = f.meta.get_int(*arch + ".vocab_size")) return *v;
  }
  return 0;
}

// Gemma 3 HF checkpoints pad the embedding beyond the tokenizer (262208 rows for 262144
// tokens in the multimodal models); llama.cpp's converter drops those rows, so the GGUF and
// the HF checkpoint give the same vocabulary. Do the same once a tokenizer is known. The
// tensor stays a view: only its row count shrinks.
void trim_gemma3_embedding(ModelFile& f) {
  if (f.format != "safetensors" || f.meta.get_string("general.architecture").value_or("") != "gemma3") return;
  const MetaValue* toks = f.meta.find("tokenizer.ggml.tokens");
  if (!toks || !toks->is_array()) return;
  const auto n = static_cast<int64_t>(toks->array().size());
  for (TensorInfo& t : f.tensors) {
    if (t.name != "token_embd.weight" && t.name != "output.weight") continue;
    if (t.ne.size() != 2 || n <= 0 || n >= t.ne[1]) continue;
    t.nbytes = t.nbytes / static_cast<size_t>(t.ne[1]) * static_cast<size_t>(n);
    t.ne[1] = n;
  }
  f.meta.set("gemma3.vocab_size", MetaValue::of_uint(static_cast<uint64_t>(n), MetaType::U32));
}

}  // namespace

void apply_tokenizer_file(ModelFile& file, const std::string& tokenizer_arg) {
  // A Hugging Face model folder stands for the tokenizer.json inside it.
  std::string tokenizer_path = tokenizer_arg;
  std::error_code ec;
  if (fs::is_directory(tokenizer_path, ec)) {
    tokenizer_path = (fs::path(tokenizer_path) / "tokenizer.json").string();
    if (!fs::exists(tokenizer_path, ec)) fail("tokenizer folder {} has no tokenizer.json", tokenizer_arg);
  }
  const int64_t n_rows = model_vocab_rows(file);
  const FileKind kind = sniff(tokenizer_path, "tokenizer");
  if (kind == FileKind::GGUF) {
    auto g = load_gguf(tokenizer_path);
    if (!g->meta.has("tokenizer.ggml.model") || !g->meta.has("tokenizer.ggml.tokens")) {
      fail("{}: GGUF file has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens)", tokenizer_path);
    }
    file.meta.erase_prefix("tokenizer.");
    for (const auto& [key, value] : g->meta.all()) {
      if (key.rfind("tokenizer.", 0) == 0) file.meta.set(key, value);
    }
  } else if (kind == FileKind::Json) {
    read_hf_tokenizer(tokenizer_path, file.meta, n_rows);
  } else if (kind == FileKind::Safetensors) {
    fail("{} is a safetensors weights file, not a tokenizer", tokenizer_path);
  } else {
    const size_t n = read_llama2c_tokenizer(tokenizer_path, file.meta);
    // A tokenizer.bin holds exactly the model's vocabulary, never a padded one.
    if (n_rows > 0 && static_cast<int64_t>(n) != n_rows) {
      fail("tokenizer {} has {} tokens but the model's vocabulary has {}", tokenizer_path, n, n_rows);
    }
  }
  if (auto toks = file.meta.find("tokenizer.ggml.tokens"); toks && toks->is_array() && n_rows > 0) {
    const auto n = static_cast<int64_t>(toks->array().size());
    if (n > n_rows) {
      fail("tokenizer {} has {} tokens, more than the model's vocabulary of {}", tokenizer_path, n, n_rows);
    }
  }
}

std::unique_ptr<ModelFile> open_model_file(const std::string& path, const std::string& tokenizer_path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) fail("model file {} does not exist", path);
  std::unique_ptr<ModelFile> f;
  if (fs::is_directory(path, ec)) {
    f = load_safetensors(path, tokenizer_path.empty());
  } else {
    switch (sniff(path, "model file")) {
      case FileKind::GGUF:
        f = load_gguf(path);
        break;
      case FileKind::Safetensors:
      case FileKind::Json:  // model.safetensors.index.json
        f = load_safetensors(path, tokenizer_path.empty());
        break;
      case FileKind::Other:
        // llama2.c checkpoints have no magic; load_llama2c validates the header and size and
        // asks for the tokenizer (which it needs) when none is given.
        return load_llama2c(path, tokenizer_path);
    }
  }
  if (!tokenizer_path.empty()) {
    apply_tokenizer_file(*f, tokenizer_path);
    trim_gemma3_embedding(*f);
  }
  return f;
}

}  // namespace dashlm
