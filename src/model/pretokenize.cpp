// Pre-tokenizers of byte-level BPE vocabularies. See pretokenize.h.
//
// llama.cpp splits text with a list of patterns applied one after the other: each pattern
// splits every piece left by the previous one into the text it matched and the text between
// matches. The GPT-2, Llama 3 and Qwen2 patterns run as custom scanners there; the others
// ("\p{N}", "[\p{P}...]+", ...) run as std::regex. Here every step is a small state machine over
// code points that gives the same pieces.
#include "model/pretokenize.h"

#include <array>
#include <string>
#include <utility>

#include <unicode/uchar.h>

#include "common/error.h"

namespace dashlm {

// ---- UTF-8 -----------------------------------------------------------------------------

std::vector<uint32_t> utf8_to_codepoints(std::string_view text) {
  std::vector<uint32_t> out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  auto cont = [&](size_t i) { return i < n && (s[i] & 0xC0) == 0x80; };
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    // The same acceptance rules as llama.cpp: the lead byte fixes the length, the
    // continuation bytes must be 10xxxxxx; overlong forms are not rejected.
    if (c < 0x80) {
      out.push_back(c);
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && cont(i + 1)) {
      out.push_back((uint32_t(c & 0x1F) << 6) | (s[i + 1] & 0x3F));
      i += 2;
    } else if ((c & 0xF0) == 0xE0 && cont(i + 1) && cont(i + 2)) {
      out.push_back((uint32_t(c & 0x0F) << 12) | (uint32_t(s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F));
      i += 3;
    } else if ((c & 0xF8) == 0xF0 && cont(i + 1) && cont(i + 2) && cont(i + 3) &&
               ((uint32_t(c & 0x07) << 18) | (uint32_t(s[i + 1] & 0x3F) << 12)) <= 0x10FFFF) {
      // (llama.cpp accepts code points past U+10FFFF here and then fails to write them back;
      // they are malformed bytes in this decoder.)
      out.push_back((uint32_t(c & 0x07) << 18) | (uint32_t(s[i + 1] & 0x3F) << 12) |
                    (uint32_t(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F));
      i += 4;
    } else {
      out.push_back(0xFFFD);  // malformed: one replacement character per bad byte
      i += 1;
    }
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | ((cp >> 18) & 0x07)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// ---- Unicode properties ------------------------------------------------------------------

namespace {

enum : uint8_t { k_letter = 1, k_number = 2, k_punct = 4, k_space = 8 };

uint8_t icu_flags(uint32_t cp) {
  if (cp > 0x10FFFF) return 0;  // beyond Unicode: no category (llama.cpp: "undefined")
  const auto c = static_cast<UChar32>(cp);
  const uint32_t mask = U_GET_GC_MASK(c);
  uint8_t f = 0;
  if (mask & U_GC_L_MASK) f |= k_letter;
  if (mask & U_GC_N_MASK) f |= k_number;
  if (mask & U_GC_P_MASK) f |= k_punct;
  if (u_isUWhiteSpace(c)) f |= k_space;
  return f;
}

const std::array<uint8_t, 128>& ascii_flags() {
  static const std::array<uint8_t, 128> table = [] {
    std::array<uint8_t, 128> t{};
    for (uint32_t c = 0; c < 128; ++c) t[c] = icu_flags(c);
    return t;
  }();
  return table;
}

inline uint8_t cp_flags(uint32_t cp) { return cp < 128 ? ascii_flags()[cp] : icu_flags(cp); }

}  // namespace

bool cp_is_letter(uint32_t cp) { return cp_flags(cp) & k_letter; }
bool cp_is_number(uint32_t cp) { return cp_flags(cp) & k_number; }
bool cp_is_punctuation(uint32_t cp) { return cp_flags(cp) & k_punct; }
bool cp_is_whitespace(uint32_t cp) { return cp_flags(cp) & k_space; }

// ---- GPT-2 byte map -------------------------------------------------------------------------

namespace {

struct ByteMap {
  std::array<std::string, 256> to_utf8;
  std::array<int16_t, 256 + 68> from_cp;  // code point -> byte (-1: none)
  ByteMap() {
    from_cp.fill(-1);
    auto printable = [](int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
    uint32_t next = 256;  // the other bytes, in increasing order, go to U+0100 .. U+0143
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = printable(b) ? static_cast<uint32_t>(b) : next++;
      append_utf8(to_utf8[b], cp);
      from_cp[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

const std::string& gpt2_byte_to_utf8(uint8_t byte) { return byte_map().to_utf8[byte]; }

int gpt2_codepoint_to_byte(uint32_t cp) {
  const auto& m = byte_map();
  return cp < m.from_cp.size() ? m.from_cp[cp] : -1;
}

// ---- pre-tokenizer names ---------------------------------------------------------------------

PreTokenizer pretokenizer_from_name(std::string_view name) {
  // Aliases are the llama.cpp names that select the same split.
  if (name.empty() || name == "default") return PreTokenizer::Default;
  if (name == "gpt2" || name == "gpt-2" || name == "phi-2" || name == "mpt" || name == "olmo")
    return PreTokenizer::Gpt2;
  if (name == "smollm" || name == "starcoder" || name == "refact") return PreTokenizer::SmolLM;
  if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") return PreTokenizer::Llama3;
  if (name == "qwen2" || name == "deepseek-r1-qwen") return PreTokenizer::Qwen2;
  fail("unsupported pre-tokenizer '{}' (tokenizer.ggml.pre); known: default, gpt2, smollm, llama-bpe, qwen2",
       std::string(name));
}

const char* pretokenizer_name(PreTokenizer p) {
  switch (p) {
    case PreTokenizer::Default: return "default";
    case PreTokenizer::Gpt2: return "gpt2";
    case PreTokenizer::SmolLM: return "smollm";
    case PreTokenizer::Llama3: return "llama-bpe";
    case PreTokenizer::Qwen2: return "qwen2";
  }
  return "?";
}

// ---- the splitters ------------------------------------------------------------------------------

namespace {

// A piece of the text as a half-open range of code point indices.
using Span = std::pair<size_t, size_t>;

struct Text {
  std::vector<uint32_t> cps;
  std::vector<uint8_t> flags;
  explicit Text(std::string_view s) : cps(utf8_to_codepoints(s)) {
    flags.resize(cps.size());
    for (size_t i = 0; i < cps.size(); ++i) flags[i] = cp_flags(cps[i]);
  }
};

// Pieces of the text a pattern did not match are kept as pieces too, so every split below
// maps a list of spans to a finer list of spans that covers the same text.

// "[class]+": maximal runs of code points in the class become pieces of their own.
template <typename Pred>
std::vector<Span> split_runs(const std::vector<Span>& in, Pred in_class) {
  std::vector<Span> out;
  out.reserve(in.size() * 2);
  for (auto [b, e] : in) {
    size_t i = b;
    while (i < e) {
      const bool m = in_class(i);
      size_t j = i + 1;
      while (j < e && in_class(j) == m) ++j;
      out.emplace_back(i, j);
      i = j;
    }
  }
  return out;
}

// "[class]": every code point in the class is a piece; runs of others stay together.
template <typename Pred>
std::vector<Span> split_each(const std::vector<Span>& in, Pred in_class) {
  std::vector<Span> out;
  out.reserve(in.size() * 2);
  for (auto [b, e] : in) {
    size_t i = b;
    while (i < e) {
      if (in_class(i)) {
        out.emplace_back(i, i + 1);
        ++i;
        continue;
      }
      size_t j = i + 1;
      while (j < e && !in_class(j)) ++j;
      out.emplace_back(i, j);
      i = j;
    }
  }
  return out;
}

// "[0-9][0-9][0-9]": leftmost groups of three ASCII digits.
std::vector<Span> split_digit_triples(const Text& t, const std::vector<Span>& in) {
  auto digit = [&](size_t i) { return t.cps[i] >= '0' && t.cps[i] <= '9'; };
  std::vector<Span> out;
  out.reserve(in.size());
  for (auto [b, e] : in) {
    size_t rest = b;  // start of the text not matched yet
    size_t i = b;
    while (i + 3 <= e) {
      if (digit(i) && digit(i + 1) && digit(i + 2)) {
        if (i > rest) out.emplace_back(rest, i);
        out.emplace_back(i, i + 3);
        i += 3;
        rest = i;
      } else {
        ++i;
      }
    }
    if (e > rest) out.emplace_back(rest, e);
  }
  return out;
}

inline uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// One scanner for the GPT-2 pattern and the Llama 3 / Qwen2 pattern; the differences:
//   GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
//   Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//            | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+        (Qwen2: \p{N} alone)
struct ScanStyle {
  bool llama3;      // false: the GPT-2 pattern
  size_t max_digits;  // Llama 3: 3, Qwen2: 1 (GPT-2: unlimited)
};

void scan_words(const Text& t, size_t b, size_t e, ScanStyle style, std::vector<Span>& out) {
  const auto& cp = t.cps;
  // Flags of position i, nothing past the end of the piece.
  auto fl = [&](size_t i) -> uint8_t { return i < e ? t.flags[i] : 0; };
  auto at = [&](size_t i) -> uint32_t { return i < e ? cp[i] : 0xFFFFFFFFu; };
  constexpr uint8_t k_lnw = k_letter | k_number | k_space;

  size_t pos = b;
  auto emit = [&](size_t end) {
    if (end > pos) out.emplace_back(pos, end);
    pos = end;
  };

  while (pos < e) {
    const uint32_t c = cp[pos];
    const uint8_t f = t.flags[pos];

    // Contractions: 's 't 'm 'd 're 've 'll (any case for Llama 3).
    if (c == '\'' && pos + 1 < e) {
      const uint32_t n1 = style.llama3 ? ascii_lower(cp[pos + 1]) : cp[pos + 1];
      if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') {
        emit(pos + 2);
        continue;
      }
      if (pos + 2 < e) {
        const uint32_t n2 = style.llama3 ? ascii_lower(cp[pos + 2]) : cp[pos + 2];
        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) {
          emit(pos + 3);
          continue;
        }
      }
    }

    if (!style.llama3) {
      // " ?" then a run of letters, of numbers, or of anything else but whitespace.
      const size_t look = (c == ' ') ? pos + 1 : pos;
      const uint8_t f2 = fl(look);
      if (f2 & k_letter) {
        size_t end = look;
        while (fl(end) & k_letter) ++end;
        emit(end);
        continue;
      }
      if (f2 & k_number) {
        size_t end = look;
        while (fl(end) & k_number) ++end;
        emit(end);
        continue;
      }
      if (look < e && !(f2 & k_lnw)) {
        size_t end = look;
        while (end < e && !(fl(end) & k_lnw)) ++end;
        emit(end);
        continue;
      }
    } else {
      // [^\r\n\p{L}\p{N}]?\p{L}+
      if (!(c == '\r' || c == '\n' || (f & k_number)) && ((f & k_letter) || (fl(pos + 1) & k_letter))) {
        size_t end = pos + 1;
        while (fl(end) & k_letter) ++end;
        emit(end);
        continue;
      }
      // \p{N}{1,3} (or \p{N}): a run of numbers cut into groups from the left.
      if (f & k_number) {
        size_t end = pos;
        while (fl(end) & k_number) {
          ++end;
          if (end - pos >= style.max_digits) break;
        }
        emit(end);
        continue;
      }
      // " ?[^\s\p{L}\p{N}]+[\r\n]*"
      const size_t look = (c == ' ') ? pos + 1 : pos;
      if (!(fl(look) & k_lnw)) {
        size_t end = look;
        while (end < e && !(fl(end) & k_lnw)) ++end;
        while (at(end) == '\r' || at(end) == '\n') ++end;
        emit(end);
        continue;
      }
    }

    // Whitespace.
    size_t n_ws = 0;
    size_t after_last_newline = 0;  // Llama 3: end of "\s*[\r\n]+"
    while (fl(pos + n_ws) & k_space) {
      if (style.llama3 && (cp[pos + n_ws] == '\r' || cp[pos + n_ws] == '\n')) after_last_newline = pos + n_ws + 1;
      ++n_ws;
    }
    if (after_last_newline > 0) {
      emit(after_last_newline);
    } else if (n_ws > 1 && pos + n_ws < e) {
      emit(pos + n_ws - 1);  // \s+(?!\S): the last space goes with the next word
    } else if (n_ws > 0) {
      emit(pos + n_ws);
    } else {
      emit(pos + 1);  // nothing matched: a piece of one code point
    }
  }
}

std::vector<Span> split_words(const Text& t, const std::vector<Span>& in, ScanStyle style) {
  std::vector<Span> out;
  out.reserve(t.cps.size() / 3 + in.size());
  for (auto [b, e] : in) scan_words(t, b, e, style, out);
  return out;
}

}  // namespace

std::vector<std::string> pretokenize(PreTokenizer p, std::string_view text) {
  const Text t(text);
  std::vector<Span> spans;
  if (!t.cps.empty()) spans.emplace_back(0, t.cps.size());

  auto is_number = [&](size_t i) { return (t.flags[i] & k_number) != 0; };
  constexpr ScanStyle gpt2{false, 0};

  switch (p) {
    case PreTokenizer::Gpt2:
      spans = split_words(t, spans, gpt2);
      break;
    case PreTokenizer::SmolLM:
      spans = split_each(spans, is_number);
      spans = split_words(t, spans, gpt2);
      break;
    case PreTokenizer::Llama3:
      spans = split_words(t, spans, ScanStyle{true, 3});
      break;
    case PreTokenizer::Qwen2:
      spans = split_words(t, spans, ScanStyle{true, 1});
      break;
    case PreTokenizer::Default: {
      // [\p{P}\$\+<=>\^~\|]+ , the GPT-2 pattern, \p{N}+ , [0-9][0-9][0-9]
      auto is_punct_like = [&](size_t i) {
        const uint32_t c = t.cps[i];
        return (t.flags[i] & k_punct) != 0 || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' ||
               c == '^' || c == '~' || c == '|';
      };
      spans = split_runs(spans, is_punct_like);
      spans = split_words(t, spans, gpt2);
      spans = split_runs(spans, is_number);
      spans = split_digit_triples(t, spans);
      break;
    }
  }

  std::vector<std::string> words;
  words.reserve(spans.size());
  for (auto [b, e] : spans) {
    std::string w;
    w.reserve(e - b);
    for (size_t i = b; i < e; ++i) append_utf8(w, t.cps[i]);
    words.push_back(std::move(w));
  }
  return words;
}

}  // namespace dashlm
