// Tokenizers built from model metadata (tokenizer.ggml.* keys).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
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
  // Per token, 1 where it begins a word: unless its text starts with a letter, a digit or a
  // non-ASCII byte and the previous token's ends with one (so "4025902" spelled digit by digit,
  // or a word cut into pieces, is one word). Control tokens stand alone.
  std::vector<uint8_t> word_starts(std::span<const int32_t> ids) const;
  // Per token, 1 where it begins a sentence: the first token, a token after one whose text ends a
  // sentence ('.', '!' or '?', then perhaps closing quotes or brackets and spaces) or holds a line
  // break, and control tokens (which stand alone, as do the tokens after them).
  std::vector<uint8_t> sentence_starts(std::span<const int32_t> ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(tokens_.size()); }
  int32_t bos() const { return bos_; }  // -1 if none
  int32_t eos() const { return eos_; }  // -1 if none
  bool add_bos_default() const { return add_bos_; }
  // tokenizer.ggml.add_eos_token: llama.cpp appends EOS with BOS when it is set (rare).
  bool add_eos_default() const { return add_eos_; }
  // SentencePiece vocabularies: a space is put before text that starts the prompt or follows
  // a special token (tokenizer.ggml.add_space_prefix; llama.cpp's default is true for "llama").
  bool add_space_prefix() const { return add_space_prefix_; }
  int32_t unk() const { return unk_; }  // -1 if none
  bool is_end_of_generation(int32_t id) const;  // EOS, EOT, <|im_end|>, <end_of_turn>, ...
  std::string_view token_text(int32_t id) const { return tokens_.at(static_cast<size_t>(id)); }
  TokenType token_type(int32_t id) const;
  int32_t find_token(std::string_view text) const;  // -1 if not in the vocabulary
  const std::string& model_name() const { return model_; }  // "llama" or "gpt2"
  const std::string& pre_name() const { return pre_; }

 protected:
  // Reads tokens, types, special ids and flags. Subclasses set their defaults (bos_, eos_,
  // unk_, add_bos_, add_space_prefix_) first; keys present in the metadata override them.
  void init_common(const Metadata& meta);  // tokens, types, bos/eos, end-of-generation set

  // A piece of the text to encode: a special token (id >= 0) or raw text [begin, end).
  struct Fragment {
    int32_t id = -1;
    size_t begin = 0, end = 0;
  };
  // Splits text at special tokens as llama.cpp's tokenizer_st_partition does: user-defined
  // tokens always, control and unknown tokens only with parse_special; longest tokens first.
  std::vector<Fragment> partition_special(std::string_view text, bool parse_special) const;

  // Token attributes as llama.cpp keeps them: its token type plus fix-ups made by text (such
  // as <|im_end|> always being a control token).
  enum Attr : uint32_t {
    ATTR_UNDEFINED = 0, ATTR_UNKNOWN = 1u << 0, ATTR_UNUSED = 1u << 1, ATTR_NORMAL = 1u << 2,
    ATTR_CONTROL = 1u << 3, ATTR_USER_DEFINED = 1u << 4, ATTR_BYTE = 1u << 5,
  };
  uint32_t attr(int32_t id) const { return attrs_[static_cast<size_t>(id)]; }
  // A control token (by the file's token type) or an id outside the vocabulary: it stands alone
  // in word_starts and sentence_starts.
  bool stands_alone(int32_t id) const {
    const auto i = static_cast<size_t>(id);
    return id < 0 || i >= tokens_.size() || (i < types_.size() && types_[i] == TokenType::CONTROL);
  }


  // Token texts in one buffer: a vocabulary of 262k tokens held as std::string costs 8 MiB in
  // string headers alone.
  class Texts {
   public:
    void assign(const std::vector<std::string>& texts);
    size_t size() const { return offsets_.empty() ? 0 : offsets_.size() - 1; }
    std::string_view operator[](size_t i) const { return {chars_.data() + offsets_[i], offsets_[i + 1] - offsets_[i]}; }
    std::string_view at(size_t i) const;  // throws std::out_of_range

   private:
    std::string chars_;
    std::vector<uint32_t> offsets_;  // size() + 1
  };

  // A byte token's piece: "<0xNN>" is that byte; another text is itself.
  static std::string byte_token_piece(std::string_view text);

  std::string model_, pre_;
  Texts tokens_;
  std::vector<TokenType> types_;
  std::vector<float> scores_;
  std::vector<uint32_t> attrs_;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  // Text -> id (find_token): open addressing over tokens_, each slot an id (-1: empty), a power
  // of two at least twice the vocabulary; 4 bytes per slot rather than a hash node per token.
  std::vector<int32_t> token_index_;
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  bool add_bos_ = false, add_eos_ = false, add_space_prefix_ = false;
  std::vector<int32_t> eog_ids_;  // sorted

 private:
  struct SpecialIndex;  // special tokens in llama.cpp's matching order, and a trie over them
  std::shared_ptr<const SpecialIndex> special_;
};

namespace detail {
// Defined in tokenizer_spm.cpp and tokenizer_bpe.cpp; Tokenizer::from_metadata picks one.
std::unique_ptr<Tokenizer> make_spm_tokenizer(const Metadata& meta);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const Metadata& meta);
}  // namespace detail

// Streaming detokenizer: feeds ids one at a time, returns the bytes that became complete
// UTF-8 (incomplete sequences are held back until the next token).
class TokenStream {
 public:
  explicit TokenStream(const Tokenizer& tok) : tok_(tok) {}
  // Streams a continuation of a prompt that ended with `last_prompt_token`: the space prefix is
  // then dropped only after BOS, never from a word that continues text.
  TokenStream(const Tokenizer& tok, int32_t last_prompt_token) : tok_(tok), prev_(last_prompt_token), first_(false) {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  int32_t prev_ = -1;
  bool first_ = true;
};

}  // namespace dashlm
