// Tokenizers built from model metadata (tokenizer.ggml.* keys).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "model/metadata.h"

namespace dashlm {

// GGUF token types (tokenizer.ggml.token_type).
enum class TokenType : int32_t {
  UNDEFINED = 0, NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6,
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Builds the tokenizer named by tokenizer.ggml.model ("llama" = SentencePiece-style BPE with
  // byte fallback, "gpt2" = byte-level BPE with the pre-tokenizer of tokenizer.ggml.pre).
  // Throws dashlm::Error for a missing or unsupported tokenizer.
  static std::unique_ptr<Tokenizer> from_metadata(const Metadata& meta);

  // Text -> ids. add_bos: prepend BOS (when the vocabulary has one). parse_special: text like
  // "<|im_start|>" becomes its control token instead of being spelled out; as in llama.cpp,
  // user-defined tokens are always matched.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const = 0;

  // The bytes a token stands for (special tokens spelled as their text, byte tokens as the byte).
  virtual std::string token_to_piece(int32_t id) const = 0;
  // Detokenize a whole sequence (for SentencePiece vocabularies the leading space that
  // follows BOS is dropped, as llama.cpp and llama2.c do).
  virtual std::string decode(const std::vector<int32_t>& ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos() const { return bos_; }  // -1 if none
  int32_t eos() const { return eos_; }  // -1 if none
  bool add_bos_default() const { return add_bos_; }
  bool is_end_of_generation(int32_t id) const;  // EOS, EOT, <|im_end|>, <end_of_turn>, ...
  const std::string& token_text(int32_t id) const { return tokens_.at(static_cast<size_t>(id)); }
  TokenType token_type(int32_t id) const;
  int32_t find_token(std::string_view text) const;  // -1 if not in the vocabulary
  const std::string& model_name() const { return model_; }  // "llama" or "gpt2"
  const std::string& pre_name() const { return pre_; }

 protected:
  void init_common(const Metadata& meta);  // tokens, types, bos/eos, end-of-generation set
  std::string model_, pre_;
  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  int32_t bos_ = -1, eos_ = -1;
  bool add_bos_ = false;
  std::vector<int32_t> eog_ids_;
};

// Streaming detokenizer: feeds ids one at a time, returns the bytes that became complete
// UTF-8 (incomplete sequences are held back until the next token).
class TokenStream {
 public:
  explicit TokenStream(const Tokenizer& tok) : tok_(tok) {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  int32_t prev_ = -1;
  bool first_ = true;
};

}  // namespace dashlm
