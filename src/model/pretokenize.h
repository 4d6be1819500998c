// Pre-tokenizers of byte-level BPE vocabularies (tokenizer.ggml.pre): they split text into
// words before the BPE merges run on each word. Each is a hand-written state machine that
// gives the same words as llama.cpp's split for that vocabulary (its regexes and the custom
// splitters it uses in their place), with Unicode categories taken from ICU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dashlm {

enum class PreTokenizer {
  Default,  // "default": punctuation runs, the GPT-2 pattern, number runs, ASCII digit triples
  Gpt2,     // "gpt2": 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
  SmolLM,   // "smollm": every \p{N} alone, then the GPT-2 pattern
  Llama3,   // "llama-bpe"/"llama3": contractions (any case), [^\r\n\p{L}\p{N}]?\p{L}+, \p{N}{1,3}, ...
  Qwen2,    // "qwen2": the Llama 3 pattern with single digits
};

// Maps a tokenizer.ggml.pre value to its pre-tokenizer; an empty name means "default".
// Throws dashlm::Error naming an unknown pre-tokenizer.
PreTokenizer pretokenizer_from_name(std::string_view name);
const char* pretokenizer_name(PreTokenizer p);

// Splits text into words (UTF-8). Invalid UTF-8 is read as U+FFFD, one per bad byte, and the
// words then hold U+FFFD in its place, exactly as llama.cpp does before byte-level BPE.
std::vector<std::string> pretokenize(PreTokenizer p, std::string_view text);

// ---- UTF-8 and Unicode helpers shared by the tokenizers ------------------------------------

// Length of the UTF-8 sequence that starts with this byte, from its high four bits only
// (1 for ASCII and stray continuation bytes, 2, 3 or 4 otherwise), as llama.cpp splits text.
inline size_t utf8_len_from_lead(unsigned char c) {
  static constexpr unsigned char k_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return k_len[c >> 4];
}

// Decodes UTF-8 into code points; a malformed sequence yields U+FFFD and skips one byte.
std::vector<uint32_t> utf8_to_codepoints(std::string_view text);
void append_utf8(std::string& out, uint32_t cp);

// Unicode properties as llama.cpp's tokenizers use them: general categories L*, N*, P*, and
// the White_Space property.
bool cp_is_letter(uint32_t cp);
bool cp_is_number(uint32_t cp);
bool cp_is_punctuation(uint32_t cp);
bool cp_is_whitespace(uint32_t cp);

// GPT-2's reversible byte -> code point map (printable bytes map to themselves, the others
// to U+0100 and up), as UTF-8 strings, and its inverse (-1 where a code point is no byte).
const std::string& gpt2_byte_to_utf8(uint8_t byte);
int gpt2_codepoint_to_byte(uint32_t cp);

}  // namespace dashlm
