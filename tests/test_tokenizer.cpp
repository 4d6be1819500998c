// Tokenizers: hand-built vocabularies for the rules, real vocabularies for parity with llama.cpp
// (expected ids in tests/data/tokenizer/*.json, written by scripts/tokenizer-parity).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <fmt/ranges.h>

#include "common/error.h"
#include "model/chat.h"
#include "model/model_file.h"
#include "model/pretokenize.h"
#include "model/tokenizer.h"

using namespace dashlm;
namespace fs = std::filesystem;

namespace {

// ---- hand-built vocabularies -------------------------------------------------------------------

struct VocabBuilder {
  std::vector<std::string> tokens;
  std::vector<double> scores;
  std::vector<int64_t> types;

  int32_t add(const std::string& text, double score = 0.0, TokenType type = TokenType::NORMAL) {
    tokens.push_back(text);
    scores.push_back(score);
    types.push_back(static_cast<int64_t>(type));
    return static_cast<int32_t>(tokens.size() - 1);
  }

  Metadata metadata(const std::string& model) const {
    Metadata m;
    MetaArray t, s, ty;
    for (const auto& x : tokens) t.push_back(MetaValue::of_string(x));
    for (double x : scores) s.push_back(MetaValue::of_float(x, MetaType::F32));
    for (int64_t x : types) ty.push_back(MetaValue::of_int(x, MetaType::I32));
    m.set("tokenizer.ggml.model", MetaValue::of_string(model));
    m.set("tokenizer.ggml.tokens", MetaValue::of_array(MetaType::STRING, std::move(t)));
    m.set("tokenizer.ggml.scores", MetaValue::of_array(MetaType::F32, std::move(s)));
    m.set("tokenizer.ggml.token_type", MetaValue::of_array(MetaType::I32, std::move(ty)));
    return m;
  }
};

MetaValue string_array(const std::vector<std::string>& v) {
  MetaArray a;
  for (const auto& x : v) a.push_back(MetaValue::of_string(x));
  return MetaValue::of_array(MetaType::STRING, std::move(a));
}

const std::string k_sp = "\xe2\x96\x81";  // U+2581

// SentencePiece-style vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then pieces.
struct SpmVocab {
  VocabBuilder v;
  int32_t byte0 = 0;
  SpmVocab() {
    v.add("<unk>", 0, TokenType::UNKNOWN);
    v.add("<s>", 0, TokenType::CONTROL);
    v.add("</s>", 0, TokenType::CONTROL);
    byte0 = static_cast<int32_t>(v.tokens.size());
    for (int b = 0; b < 256; ++b) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "<0x%02X>", b);
      v.add(hex, 0, TokenType::BYTE);
    }
  }
  int32_t byte(uint8_t b) const { return byte0 + b; }
};

// Byte-level BPE vocabulary: the 256 byte characters (id = byte value), then merged tokens.
struct BpeVocab {
  VocabBuilder v;
  std::vector<std::string> merges;
  BpeVocab() {
    for (int b = 0; b < 256; ++b) v.add(gpt2_byte_to_utf8(static_cast<uint8_t>(b)));
  }
  // Adds the merge "left right" and the token left+right.
  int32_t merge(const std::string& left, const std::string& right) {
    merges.push_back(left + " " + right);
    return v.add(left + right);
  }
  Metadata metadata(const std::string& pre) const {
    Metadata m = v.metadata("gpt2");
    m.set("tokenizer.ggml.pre", MetaValue::of_string(pre));
    m.set("tokenizer.ggml.merges", string_array(merges));
    return m;
  }
};

std::vector<std::string> words(PreTokenizer p, const std::string& s) { return pretokenize(p, s); }
using Words = std::vector<std::string>;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool valid_utf8(const std::string& s) {
  std::string again;
  for (uint32_t cp : utf8_to_codepoints(s)) append_utf8(again, cp);
  return again == s;
}

}  // namespace

// ---- SentencePiece-style BPE ---------------------------------------------------------------------

TEST(TokenizerSpm, MergesHighestScoreFirst) {
  SpmVocab sv;
  auto& v = sv.v;
  const int32_t a = v.add("a", -10), b = v.add("b", -11), c = v.add("c", -12), sp = v.add(k_sp, -13);
  v.add("ab", -3);
  v.add("bc", -1);
  const int32_t abc = v.add("abc", -2);
  const int32_t sp_a = v.add(k_sp + "a", -4);
  (void)a, (void)b, (void)c, (void)sp_a;
  auto tok = Tokenizer::from_metadata(v.metadata("llama"));
  EXPECT_EQ(tok->model_name(), "llama");
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  EXPECT_TRUE(tok->add_bos_default());
  EXPECT_TRUE(tok->add_space_prefix());
  // "▁abc": bc (-1) first, then a+bc = abc (-2); ▁a (-4) is stale by then.
  EXPECT_EQ(tok->encode("abc", false, false), (std::vector<int32_t>{sp, abc}));
  EXPECT_EQ(tok->encode("abc", true, false), (std::vector<int32_t>{1, sp, abc}));
}

TEST(TokenizerSpm, EqualScoresMergeLeftmostFirst) {
  SpmVocab sv;
  auto& v = sv.v;
  const int32_t a = v.add("a", -10);
  const int32_t aa = v.add("aa", -1);
  Metadata m = v.metadata("llama");
  m.set("tokenizer.ggml.add_space_prefix", MetaValue::of_bool(false));
  auto tok = Tokenizer::from_metadata(m);
  EXPECT_EQ(tok->encode("aaa", false, false), (std::vector<int32_t>{aa, a}));
  EXPECT_EQ(tok->encode("aaaaa", false, false), (std::vector<int32_t>{aa, aa, a}));
}

TEST(TokenizerSpm, ByteFallbackAndDecode) {
  SpmVocab sv;
  auto& v = sv.v;
  v.add("a", -10);
  v.add(k_sp, -13);
  const int32_t sp_a = v.add(k_sp + "a", -1);
  auto tok = Tokenizer::from_metadata(v.metadata("llama"));
  const std::string text = "a\xe2\x82\xac";  // "a€", € not in the vocabulary
  const auto ids = tok->encode(text, true, false);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, sp_a, sv.byte(0xE2), sv.byte(0x82), sv.byte(0xAC)}));
  EXPECT_EQ(tok->token_to_piece(sp_a), " a");
  EXPECT_EQ(tok->token_to_piece(sv.byte(0xE2)), "\xe2");
  EXPECT_EQ(tok->token_to_piece(1), "<s>");
  // decode drops BOS and the space prefix.
  EXPECT_EQ(tok->decode(ids), text);
}

TEST(TokenizerSpm, SpacePrefixFollowsSpecialTokens) {
  SpmVocab sv;
  auto& v = sv.v;
  const int32_t a = v.add("a", -10), sp = v.add(k_sp, -13);
  v.add("b", -11);
  const int32_t sp_a = v.add(k_sp + "a", -1), sp_b = v.add(k_sp + "b", -2);
  const int32_t user = v.add("<u>", 0, TokenType::USER_DEFINED);
  const int32_t ctl = v.add("<c>", 0, TokenType::CONTROL);
  auto tok = Tokenizer::from_metadata(v.metadata("llama"));
  // As llama.cpp: every piece of text after a special token gets the space prefix again.
  EXPECT_EQ(tok->encode("a<u>b", false, false), (std::vector<int32_t>{sp_a, user, sp_b}));
  EXPECT_EQ(tok->encode("a<c>b", false, true), (std::vector<int32_t>{sp_a, ctl, sp_b}));
  // Control tokens are spelled out without parse_special ("<c>" is not in the vocabulary: bytes).
  EXPECT_EQ(tok->encode("<c>", false, false), (std::vector<int32_t>{sp, sv.byte('<'), sv.byte('c'), sv.byte('>')}));
  // Without the space prefix.
  Metadata m = v.metadata("llama");
  m.set("tokenizer.ggml.add_space_prefix", MetaValue::of_bool(false));
  auto tok2 = Tokenizer::from_metadata(m);
  EXPECT_EQ(tok2->encode("a", false, false), (std::vector<int32_t>{a}));
  EXPECT_EQ(tok2->encode(" a", false, false), (std::vector<int32_t>{sp_a}));
}

TEST(TokenizerSpm, EmptyTextIsOnlyBos) {
  SpmVocab sv;
  auto tok = Tokenizer::from_metadata(sv.v.metadata("llama"));
  EXPECT_EQ(tok->encode("", true, true), (std::vector<int32_t>{1}));
  EXPECT_TRUE(tok->encode("", false, true).empty());
}

TEST(TokenizerSpm, PlainSpaceVocabulary) {
  // A vocabulary that writes spaces as spaces (and has no U+2581) is matched as written.
  SpmVocab sv;
  auto& v = sv.v;
  v.add("a", -10);
  v.add(" ", -13);
  const int32_t sp_a = v.add(" a", -1);
  auto tok = Tokenizer::from_metadata(v.metadata("llama"));
  EXPECT_EQ(tok->encode("a a", false, false), (std::vector<int32_t>{sp_a, sp_a}));
  EXPECT_EQ(tok->token_to_piece(sp_a), " a");
}

// ---- byte-level BPE ---------------------------------------------------------------------------

TEST(TokenizerBpe, MergesByRank) {
  BpeVocab bv;
  const int32_t bc = bv.merge("b", "c");
  const int32_t ab = bv.merge("a", "b");
  const int32_t g_a = bv.merge("\xc4\xa0", "a");  // "Ġa"
  auto tok = Tokenizer::from_metadata(bv.metadata("gpt2"));
  EXPECT_EQ(tok->model_name(), "gpt2");
  EXPECT_FALSE(tok->add_bos_default());
  EXPECT_EQ(tok->encode("abc", false, false), (std::vector<int32_t>{'a', bc}));
  EXPECT_EQ(tok->encode(" abc", false, false), (std::vector<int32_t>{g_a, bc}));
  EXPECT_EQ(tok->encode("ab", false, false), (std::vector<int32_t>{ab}));
  EXPECT_EQ(tok->decode(tok->encode(" abc", false, false)), " abc");

  BpeVocab other;  // the same merges in the other order
  const int32_t ab2 = other.merge("a", "b");
  other.merge("b", "c");
  auto tok2 = Tokenizer::from_metadata(other.metadata("gpt2"));
  EXPECT_EQ(tok2->encode("abc", false, false), (std::vector<int32_t>{ab2, 'c'}));
}

TEST(TokenizerBpe, ChainedMergesAndBytes) {
  BpeVocab bv;
  bv.merge("h", "e");
  bv.merge("l", "l");
  bv.merge("he", "ll");
  const int32_t hello = bv.merge("hell", "o");
  auto tok = Tokenizer::from_metadata(bv.metadata("gpt2"));
  EXPECT_EQ(tok->encode("hello", false, false), (std::vector<int32_t>{hello}));
  // Bytes of a multi-byte character are byte tokens; pieces decode back to bytes.
  const auto ids = tok->encode("\xc3\xa9", false, false);  // é
  EXPECT_EQ(ids, (std::vector<int32_t>{0xC3, 0xA9}));
  EXPECT_EQ(tok->token_to_piece(0xC3), "\xc3");
  EXPECT_EQ(tok->decode(ids), "\xc3\xa9");
  // Invalid UTF-8 becomes U+FFFD before the byte map, as in llama.cpp.
  EXPECT_EQ(tok->encode("\xff", false, false), (std::vector<int32_t>{0xEF, 0xBF, 0xBD}));
}

TEST(TokenizerBpe, BosOnlyWhenTheKeySaysSo) {
  BpeVocab bv;
  const int32_t bos = bv.v.add("<|endoftext|>", 0, TokenType::CONTROL);
  Metadata m = bv.metadata("gpt2");
  m.set("tokenizer.ggml.bos_token_id", MetaValue::of_uint(static_cast<uint64_t>(bos), MetaType::U32));
  EXPECT_FALSE(Tokenizer::from_metadata(m)->add_bos_default());
  m.set("tokenizer.ggml.add_bos_token", MetaValue::of_bool(true));
  auto tok = Tokenizer::from_metadata(m);
  EXPECT_TRUE(tok->add_bos_default());
  EXPECT_EQ(tok->encode("a", true, false), (std::vector<int32_t>{bos, 'a'}));
  // The Llama 3 pre-tokenizer defaults to BOS, as llama.cpp does.
  Metadata m3 = bv.metadata("llama-bpe");
  EXPECT_TRUE(Tokenizer::from_metadata(m3)->add_bos_default());
}

TEST(TokenizerBpe, UnknownPreTokenizerIsAnError) {
  BpeVocab bv;
  try {
    Tokenizer::from_metadata(bv.metadata("no-such-pre"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-pre"), std::string::npos);
  }
  Metadata m = bv.metadata("gpt2");
  m.set("tokenizer.ggml.model", MetaValue::of_string("t5"));
  EXPECT_THROW(Tokenizer::from_metadata(m), Error);
  EXPECT_THROW(Tokenizer::from_metadata(Metadata{}), Error);
}

TEST(TokenizerBpe, LongWordIsNotQuadratic) {
  BpeVocab bv;
  std::string t = "a";
  for (int i = 0; i < 6; ++i) {  // a, aa, aaaa, ... 64 a's
    bv.merge(t, t);
    t += t;
  }
  auto tok = Tokenizer::from_metadata(bv.metadata("gpt2"));
  const std::string text(1 << 20, 'a');  // one 1 MiB word
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok->encode(text, false, false);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ids.size(), (1u << 20) / 64);
  EXPECT_LT(s, 10.0);
}

// ---- pre-tokenizers -------------------------------------------------------------------------

TEST(PreTokenize, Gpt2) {
  const auto p = PreTokenizer::Gpt2;
  EXPECT_EQ(words(p, "Hello world"), (Words{"Hello", " world"}));
  EXPECT_EQ(words(p, "it's I'm we'll they've"), (Words{"it", "'s", " I", "'m", " we", "'ll", " they", "'ve"}));
  EXPECT_EQ(words(p, "IT'S"), (Words{"IT", "'", "S"}));  // case-sensitive contractions
  EXPECT_EQ(words(p, "a  b"), (Words{"a", " ", " b"}));
  EXPECT_EQ(words(p, "a\n\nb"), (Words{"a", "\n", "\n", "b"}));
  EXPECT_EQ(words(p, "abc   "), (Words{"abc", "   "}));
  EXPECT_EQ(words(p, "x 123456 y"), (Words{"x", " 123456", " y"}));
  EXPECT_EQ(words(p, "hello!!! world?!"), (Words{"hello", "!!!", " world", "?!"}));
  EXPECT_EQ(words(p, "caf\xc3\xa9 na\xc3\xafve"), (Words{"caf\xc3\xa9", " na\xc3\xafve"}));
  // A combining mark is not a letter: e + U+0301 + a.
  EXPECT_EQ(words(p, "e\xcc\x81" "a"), (Words{"e", "\xcc\x81", "a"}));
  // CJK letters, fullwidth comma (punctuation), emoji (symbols).
  EXPECT_EQ(words(p, "\xe4\xb8\xad\xe6\x96\x87\xef\xbc\x8c\xe6\xa0\x87"),
            (Words{"\xe4\xb8\xad\xe6\x96\x87", "\xef\xbc\x8c", "\xe6\xa0\x87"}));
  EXPECT_EQ(words(p, "hi \xf0\x9f\x98\x80\xf0\x9f\x98\x83!"), (Words{"hi", " \xf0\x9f\x98\x80\xf0\x9f\x98\x83!"}));
  // Non-ASCII whitespace (no-break space) and numbers (Arabic-Indic digits).
  EXPECT_EQ(words(p, "a\xc2\xa0" "b"), (Words{"a", "\xc2\xa0", "b"}));
  EXPECT_EQ(words(p, "\xd9\xa1\xd9\xa2x"), (Words{"\xd9\xa1\xd9\xa2", "x"}));
  EXPECT_TRUE(words(p, "").empty());
}

TEST(PreTokenize, SmolLMSplitsDigits) {
  const auto p = PreTokenizer::SmolLM;
  EXPECT_EQ(words(p, "a 12b"), (Words{"a", " ", "1", "2", "b"}));
  EXPECT_EQ(words(p, "2024-07-24"), (Words{"2", "0", "2", "4", "-", "0", "7", "-", "2", "4"}));
  EXPECT_EQ(words(p, "x\xc2\xb2"), (Words{"x", "\xc2\xb2"}));  // superscript two is \p{N}
  EXPECT_EQ(words(p, "It's 3pm"), (Words{"It", "'s", " ", "3", "pm"}));
}

TEST(PreTokenize, Llama3) {
  const auto p = PreTokenizer::Llama3;
  EXPECT_EQ(words(p, "IT'S don't DON'T"), (Words{"IT", "'S", " don", "'t", " DON", "'T"}));
  EXPECT_EQ(words(p, "1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(words(p, "hello\n\nworld"), (Words{"hello", "\n\n", "world"}));
  EXPECT_EQ(words(p, "a  \n  b"), (Words{"a", "  \n", " ", " b"}));
  EXPECT_EQ(words(p, "x!!\n\ny"), (Words{"x", "!!\n\n", "y"}));
  EXPECT_EQ(words(p, "$100"), (Words{"$", "100"}));
  EXPECT_EQ(words(p, "e\xcc\x81" "a"), (Words{"e", "\xcc\x81" "a"}));  // [^\r\n\p{L}\p{N}]?\p{L}+
  EXPECT_EQ(words(p, "\xe4\xb8\xad\xe6\x96\x87\xef\xbc\x8c\xe6\xa0\x87"),
            (Words{"\xe4\xb8\xad\xe6\x96\x87", "\xef\xbc\x8c\xe6\xa0\x87"}));
  EXPECT_EQ(words(p, "end.  "), (Words{"end", ".", "  "}));
  EXPECT_EQ(words(p, "\tfoo"), (Words{"\tfoo"}));
}

TEST(PreTokenize, Qwen2SingleDigits) {
  const auto p = PreTokenizer::Qwen2;
  EXPECT_EQ(words(p, "x1234"), (Words{"x", "1", "2", "3", "4"}));
  EXPECT_EQ(words(p, "We'LL go"), (Words{"We", "'LL", " go"}));
}

TEST(PreTokenize, Default) {
  const auto p = PreTokenizer::Default;
  EXPECT_EQ(words(p, "Hello, world! 1234567 $5"),
            (Words{"Hello", ",", " world", "!", " ", "123", "456", "7", " ", "$", "5"}));
  EXPECT_EQ(words(p, "a+b<=c"), (Words{"a", "+", "b", "<=", "c"}));
}

TEST(PreTokenize, NamesAndUtf8) {
  EXPECT_EQ(pretokenizer_from_name("smollm"), PreTokenizer::SmolLM);
  EXPECT_EQ(pretokenizer_from_name("llama-bpe"), PreTokenizer::Llama3);
  EXPECT_EQ(pretokenizer_from_name(""), PreTokenizer::Default);
  EXPECT_THROW(pretokenizer_from_name("bogus"), Error);
  EXPECT_EQ(utf8_to_codepoints("a\xc3\xa9\xff\xe2\x82"), (std::vector<uint32_t>{'a', 0xE9, 0xFFFD, 0xFFFD, 0xFFFD}));
  for (int b = 0; b < 256; ++b) {
    const auto cps = utf8_to_codepoints(gpt2_byte_to_utf8(static_cast<uint8_t>(b)));
    ASSERT_EQ(cps.size(), 1u);
    EXPECT_EQ(gpt2_codepoint_to_byte(cps[0]), b);
  }
  EXPECT_EQ(gpt2_byte_to_utf8(' '), "\xc4\xa0");  // Ġ
  EXPECT_EQ(gpt2_byte_to_utf8('\n'), "\xc4\x8a");  // Ċ
}

// ---- special tokens --------------------------------------------------------------------------

TEST(TokenizerSpecial, LongestTokenFirstNotLeftmost) {
  BpeVocab bv;
  const int32_t abcd = bv.v.add("abcd", 0, TokenType::USER_DEFINED);
  const int32_t xab = bv.v.add("xab", 0, TokenType::USER_DEFINED);
  auto tok = Tokenizer::from_metadata(bv.metadata("gpt2"));
  // llama.cpp matches the longer token everywhere before it looks for the shorter one.
  EXPECT_EQ(tok->encode("xabcd", false, false), (std::vector<int32_t>{'x', abcd}));
  EXPECT_EQ(tok->encode("xabxab", false, false), (std::vector<int32_t>{xab, xab}));
  EXPECT_EQ(tok->encode("xabcdxab", false, false), (std::vector<int32_t>{'x', abcd, xab}));
}

TEST(TokenizerSpecial, ControlOnlyWithParseSpecial) {
  BpeVocab bv;
  const int32_t start = bv.v.add("<|im_start|>", 0, TokenType::CONTROL);
  const int32_t end = bv.v.add("<|im_end|>", 0, TokenType::NORMAL);  // made control by its text
  const int32_t nl2 = bv.v.add("\n\n", 0, TokenType::USER_DEFINED);
  auto tok = Tokenizer::from_metadata(bv.metadata("gpt2"));
  EXPECT_EQ(tok->encode("<|im_start|>x<|im_end|>", false, true), (std::vector<int32_t>{start, 'x', end}));
  const auto spelled = tok->encode("<|im_start|>", false, false);
  EXPECT_EQ(spelled.size(), 12u);  // bytes, no merges in this vocabulary
  EXPECT_EQ(tok->decode(spelled), "<|im_start|>");
  // User-defined tokens are matched either way.
  EXPECT_EQ(tok->encode("a\n\nb", false, false), (std::vector<int32_t>{'a', nl2, 'b'}));
  EXPECT_TRUE(tok->is_end_of_generation(end));
  EXPECT_FALSE(tok->is_end_of_generation(start));
  EXPECT_EQ(tok->find_token("<|im_end|>"), end);
  EXPECT_EQ(tok->find_token("nope"), -1);
}

TEST(TokenizerSpecial, ManySpecialsInALongText) {
  // Runs of newlines with user-defined tokens for 1..31 newlines (as in Gemma): greedy by length.
  BpeVocab bv;
  std::vector<int32_t> nl(32, -1);
  for (int k = 2; k < 32; ++k) nl[static_cast<size_t>(k)] = bv.v.add(std::string(static_cast<size_t>(k), '\n'), 0, TokenType::USER_DEFINED);
  auto tok = Tokenizer::from_metadata(bv.metadata("gpt2"));
  EXPECT_EQ(tok->encode(std::string(40, '\n'), false, false), (std::vector<int32_t>{nl[31], nl[9]}));
  EXPECT_EQ(tok->encode(std::string(33, '\n'), false, false), (std::vector<int32_t>{nl[31], nl[2]}));
  const std::string big(200000, '\n');
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok->encode(big, false, false);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
  EXPECT_EQ(ids.size(), 200000u / 31 + 1);
}

// ---- streaming -------------------------------------------------------------------------------

TEST(TokenStream, HoldsIncompleteUtf8AndDropsTheSpacePrefix) {
  SpmVocab sv;
  auto& v = sv.v;
  v.add("a", -10);
  v.add(k_sp, -13);
  const int32_t sp_a = v.add(k_sp + "a", -1);
  auto tok = Tokenizer::from_metadata(v.metadata("llama"));
  TokenStream s(*tok);
  EXPECT_EQ(s.push(1), "");      // BOS
  EXPECT_EQ(s.push(sp_a), "a");  // the space prefix is dropped after BOS
  EXPECT_EQ(s.push(sp_a), " a");
  EXPECT_EQ(s.push(sv.byte(0xE2)), "");
  EXPECT_EQ(s.push(sv.byte(0x82)), "");
  EXPECT_EQ(s.push(sv.byte(0xAC)), "\xe2\x82\xac");
  EXPECT_EQ(s.push(sv.byte(0xF0)), "");
  EXPECT_EQ(s.flush(), "\xf0");
  // A stream of generated tokens only: its first piece is the start of the text.
  TokenStream s2(*tok);
  EXPECT_EQ(s2.push(sp_a), "a");
  EXPECT_EQ(s2.push(sp_a), " a");
}

// ---- chat formats ----------------------------------------------------------------------------

TEST(Chat, FormatsAndDefaultSystemPrompt) {
  Metadata m;
  m.set("tokenizer.chat_template",
        MetaValue::of_string("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                             "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                             "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
                             "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"));
  EXPECT_EQ(chat_format_of(m), ChatFormat::ChatML);
  const std::string sys = chat_default_system_prompt(m);
  EXPECT_EQ(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(chat_format_user_turn(ChatFormat::ChatML, "Hi", sys),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(chat_format_user_turn(ChatFormat::Gemma, "Hi"),
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
  EXPECT_EQ(chat_format_user_turn(ChatFormat::Llama3, "Hi"),
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_STREQ(chat_format_name(ChatFormat::Gemma), "gemma");

  Metadata g;
  g.set("general.architecture", MetaValue::of_string("gemma3"));
  EXPECT_EQ(chat_format_of(g), ChatFormat::Gemma);
  EXPECT_EQ(chat_default_system_prompt(g), "");
  Metadata l;
  l.set("tokenizer.chat_template", MetaValue::of_string("{{ '<|start_header_id|>' + message['role'] }}"));
  EXPECT_EQ(chat_format_of(l), ChatFormat::Llama3);
  Metadata q;  // a system turn built from variables is no default prompt
  q.set("tokenizer.chat_template", MetaValue::of_string("{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>' }}"));
  EXPECT_EQ(chat_default_system_prompt(q), "");
  EXPECT_EQ(chat_format_of(Metadata{}), ChatFormat::None);
}

// ---- real vocabularies --------------------------------------------------------------------------

namespace {

const fs::path k_texts = fs::path(DASHLM_TEST_DATA_DIR) / "tokenizer_texts";
const fs::path k_expected = fs::path(DASHLM_TEST_DATA_DIR) / "tokenizer";

// Compares the tokenizer with llama.cpp's ids saved by scripts/tokenizer-parity.
void check_against_llama_cpp(const Tokenizer& tok, const std::string& expected_json) {
  const fs::path path = k_expected / expected_json;
  ASSERT_TRUE(fs::exists(path)) << path << " is missing (scripts/tokenizer-parity --write-expected tests/data/tokenizer)";
  const auto j = nlohmann::json::parse(read_file(path));
  size_t n_checked = 0;
  for (const auto& [name, modes] : j.at("texts").items()) {
    const fs::path text_path = k_texts / name;
    ASSERT_TRUE(fs::exists(text_path)) << text_path;
    const std::string text = read_file(text_path);
    for (const bool special : {true, false}) {
      const auto& w = modes.at(special || modes.at("no_special") == "same" ? "special" : "no_special");
      const auto want = w.get<std::vector<int32_t>>();
      auto got = tok.encode(text, tok.add_bos_default(), special);
      if (tok.add_eos_default() && tok.eos() >= 0) got.push_back(tok.eos());
      EXPECT_EQ(got, want) << name << (special ? " (special)" : " (no special)");
      ++n_checked;
    }
    // Round trip without special parsing (valid UTF-8 only: invalid bytes become U+FFFD in BPE).
    if (valid_utf8(text)) {
      EXPECT_EQ(tok.decode(tok.encode(text, tok.add_bos_default(), false)), text) << name << " round trip";
    }
  }
  EXPECT_GE(n_checked, 2u);
}

std::unique_ptr<Tokenizer> gguf_tokenizer(const std::string& file) {
  const fs::path p = fs::path(DASHLM_SOURCE_DIR) / "models" / file;
  if (!fs::exists(p)) return nullptr;
  return Tokenizer::from_metadata(open_model_file(p.string())->meta);
}

}  // namespace

TEST(TokenizerReal, Stories260K) {
  const std::string dir = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/";
  auto file = open_model_file(dir + "stories260K.bin", dir + "tok512.bin");
  auto tok = Tokenizer::from_metadata(file->meta);
  EXPECT_EQ(tok->n_vocab(), 512);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  // llama2.c's encode() of "Once upon a time" with BOS (scripts/tokenizer-parity transcribes it).
  const std::vector<int32_t> ids = tok->encode("Once upon a time", true, false);
  EXPECT_EQ(ids, (std::vector<int32_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->decode(ids), "Once upon a time");
  TokenStream s(*tok);
  std::string streamed;
  for (int32_t id : ids) streamed += s.push(id);
  EXPECT_EQ(streamed + s.flush(), "Once upon a time");
  EXPECT_TRUE(tok->is_end_of_generation(2));
  check_against_llama_cpp(*tok, "stories260K.json");
}

TEST(TokenizerReal, SmolLM2) {
  auto tok = gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!tok) GTEST_SKIP() << "models/SmolLM2-135M-Instruct.Q4_1.gguf not present";
  EXPECT_EQ(tok->model_name(), "gpt2");
  EXPECT_EQ(tok->pre_name(), "smollm");
  EXPECT_FALSE(tok->add_bos_default());
  EXPECT_TRUE(tok->is_end_of_generation(tok->find_token("<|im_end|>")));
  const auto file = open_model_file((fs::path(DASHLM_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").string());
  EXPECT_EQ(chat_format_of(file->meta), ChatFormat::ChatML);
  EXPECT_EQ(chat_default_system_prompt(file->meta), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  check_against_llama_cpp(*tok, "SmolLM2-135M-Instruct.Q4_1.json");
}

namespace {

// A text's tokens joined into the groups that `starts` (word_starts or sentence_starts) marks.
using StartsFn = std::vector<uint8_t> (Tokenizer::*)(std::span<const int32_t>) const;
std::vector<std::string> groups_of(const Tokenizer& t, const std::string& text, bool bos, StartsFn starts) {
  const std::vector<int32_t> ids = t.encode(text, bos, true);
  const std::vector<uint8_t> st = (t.*starts)(ids);
  EXPECT_EQ(st.size(), ids.size());
  if (!st.empty()) EXPECT_EQ(st[0], 1);
  std::vector<std::string> out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (st[i] || out.empty()) out.emplace_back();
    out.back() += t.token_to_piece(ids[i]);
  }
  return out;
}

}  // namespace

// Word starts: pieces that continue a letter or digit run join the word before them.
TEST(TokenizerReal, WordStarts) {
  const std::string dir = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/";
  auto file = open_model_file(dir + "stories260K.bin", dir + "tok512.bin");
  auto tok = Tokenizer::from_metadata(file->meta);
  auto words = [](const Tokenizer& t, const std::string& text, bool bos) { return groups_of(t, text, bos, &Tokenizer::word_starts); };
  // stories260K's 512 pieces cut most words into several.
  const auto w = words(*tok, "Once upon a time, Lily played.", true);
  EXPECT_EQ(w, (std::vector<std::string>{"<s>", " Once", " upon", " a", " time", ",", " Lily", " played", "."}))
      << fmt::format("{}", fmt::join(w, "|"));
  EXPECT_TRUE(tok->word_starts({}).empty());
  auto smol = gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!smol) GTEST_SKIP() << "models/SmolLM2-135M-Instruct.Q4_1.gguf not present";
  // Digits are single tokens there (the space before them one more): a number is still one word,
  // the control tokens stand alone.
  const auto n = words(*smol, "<|im_start|>user\nThe pass key is 4025902. Remember it.", false);
  EXPECT_EQ(n, (std::vector<std::string>{"<|im_start|>", "user", "\n", "The", " pass", " key", " is", " ", "4025902", ".", " Remember", " it",
                                     "."}))
      << fmt::format("{}", fmt::join(n, "|"));
}

// Sentence starts: after a piece that ends a sentence ('.', '!', '?', then closing quotes or
// brackets) or holds a line break, and around control tokens.
TEST(TokenizerReal, SentenceStarts) {
  const std::string dir = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/";
  auto file = open_model_file(dir + "stories260K.bin", dir + "tok512.bin");
  auto tok = Tokenizer::from_metadata(file->meta);
  auto sentences = [](const Tokenizer& t, const std::string& text, bool bos) {
    return groups_of(t, text, bos, &Tokenizer::sentence_starts);
  };
  const auto s = sentences(*tok, "Once upon a time, Lily played. She said \"Hi!\" Then she ran? Yes", true);
  EXPECT_EQ(s, (std::vector<std::string>{"<s>", " Once upon a time, Lily played.", " She said \"Hi!\"", " Then she ran?", " Yes"}))
      << fmt::format("{}", fmt::join(s, "|"));
  EXPECT_TRUE(tok->sentence_starts({}).empty());
  auto smol = gguf_tokenizer("SmolLM2-135M-Instruct.Q4_1.gguf");
  if (!smol) GTEST_SKIP() << "models/SmolLM2-135M-Instruct.Q4_1.gguf not present";
  const auto n = sentences(*smol, "<|im_start|>user\nThe pass key is 4025902. Remember it.\nSomeone carved the word \"otter\" into the door.", false);
  EXPECT_EQ(n, (std::vector<std::string>{"<|im_start|>", "user", "\n", "The pass key is 4025902.", " Remember it.", "\n",
                                     "Someone carved the word \"otter\" into the door."}))
      << fmt::format("{}", fmt::join(n, "|"));
}

TEST(TokenizerReal, SmolLM2VocabularyWithOtherPreTokenizers) {
  // The SmolLM2 vocabulary read with the other pre-tokenizers, against llama.cpp on the same
  // vocabulary-only GGUF (scripts/tokenizer-parity --with-pre).
  const fs::path p = fs::path(DASHLM_SOURCE_DIR) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
  if (!fs::exists(p)) GTEST_SKIP() << "models/SmolLM2-135M-Instruct.Q4_1.gguf not present";
  auto file = open_model_file(p.string());
  for (const std::string pre : {"default", "gpt-2", "llama-bpe", "qwen2"}) {
    SCOPED_TRACE(pre);
    Metadata m = file->meta;
    m.set("tokenizer.ggml.pre", MetaValue::of_string(pre));
    auto tok = Tokenizer::from_metadata(m);
    check_against_llama_cpp(*tok, "SmolLM2-135M-Instruct.Q4_1.pre-" + pre + ".json");
  }
}

TEST(TokenizerReal, Gemma3) {
  auto tok = gguf_tokenizer("gemma-3-270m-q4_k_m.gguf");
  if (!tok) GTEST_SKIP() << "models/gemma-3-270m-q4_k_m.gguf not present";
  EXPECT_EQ(tok->model_name(), "llama");
  EXPECT_TRUE(tok->add_bos_default());
  EXPECT_FALSE(tok->add_space_prefix());
  EXPECT_EQ(tok->bos(), 2);
  EXPECT_TRUE(tok->is_end_of_generation(tok->find_token("<end_of_turn>")));
  const auto file = open_model_file((fs::path(DASHLM_SOURCE_DIR) / "models" / "gemma-3-270m-q4_k_m.gguf").string());
  EXPECT_EQ(chat_format_of(file->meta), ChatFormat::Gemma);
  check_against_llama_cpp(*tok, "gemma-3-270m-q4_k_m.json");
}

TEST(TokenizerReal, Qwen25) {
  const fs::path p = fs::path(DASHLM_SOURCE_DIR) / "models" / "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf";
  if (!fs::exists(p)) GTEST_SKIP() << "models/qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf not present";
  auto file = open_model_file(p.string());
  auto tok = Tokenizer::from_metadata(file->meta);
  EXPECT_EQ(tok->pre_name(), "qwen2");
  EXPECT_FALSE(tok->add_bos_default());
  EXPECT_TRUE(tok->is_end_of_generation(tok->find_token("<|im_end|>")));
  EXPECT_TRUE(tok->is_end_of_generation(tok->find_token("<|endoftext|>")));
  EXPECT_EQ(chat_format_of(file->meta), ChatFormat::ChatML);
  EXPECT_EQ(chat_default_system_prompt(file->meta), "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  check_against_llama_cpp(*tok, "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.json");
}

TEST(TokenizerReal, LongPromptIsFast) {
  // About 100k tokens of real text through each real vocabulary.
  std::string page = read_file(k_texts / "apache_license.txt") + read_file(k_texts / "nodejs_url.txt") +
                     read_file(k_texts / "unicode_mix.txt");
  std::string text;
  while (text.size() < 450000) text += page;
  for (const char* name :
       {"SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf", "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf"}) {
    auto tok = gguf_tokenizer(name);
    if (!tok) continue;
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok->encode(text, tok->add_bos_default(), true);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GT(ids.size(), 90000u) << name;
    EXPECT_LT(s, 10.0) << name << ": " << ids.size() << " tokens in " << s << " s";
    std::printf("%s: %zu tokens in %.3f s\n", name, ids.size(), s);
  }
}
