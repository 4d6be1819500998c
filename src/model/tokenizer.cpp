// Tokenizer: what SentencePiece-style and byte-level BPE vocabularies share (the vocabulary,
// special ids, special-token partitioning, detokenization, streaming). The rules follow
// llama.cpp's llama-vocab.cpp so that the ids are the same as llama.cpp's for a GGUF file.
#include "model/tokenizer.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <limits>

#include "common/error.h"

namespace dashlm {

namespace {

// Texts llama.cpp treats as end-of-generation tokens. Every token with one of these texts is
// made a control token there (whatever its type in the file), which matters for how text is
// split at special tokens, so the same is done here.
constexpr std::array<std::string_view, 22> k_llama_cpp_eog_texts = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",  // DeepSeek's <｜end▁of▁sentence｜>
    "[e~[",
};

// Texts of tokens that end a turn for generation here (besides EOS and the eot/eom keys).
constexpr std::array<std::string_view, 7> k_end_of_turn_texts = {
    "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "<|eom_id|>", "<|end_of_text|>",
};

}  // namespace

// ---- factory ------------------------------------------------------------------------------------

std::unique_ptr<Tokenizer> Tokenizer::from_metadata(const Metadata& meta) {
  const auto model = meta.get_string("tokenizer.ggml.model");
  if (!model) fail("the model has no tokenizer (tokenizer.ggml.model is missing)");
  if (*model == "llama") return detail::make_spm_tokenizer(meta);
  if (*model == "gpt2") return detail::make_bpe_tokenizer(meta);
  fail("unsupported tokenizer '{}' (tokenizer.ggml.model); supported: llama, gpt2", *model);
}

// ---- vocabulary -----------------------------------------------------------------------------

struct Tokenizer::SpecialIndex {
  // Special tokens (control, user-defined, unknown) in llama.cpp's matching order: longest
  // text first, ties ordered as std::sort leaves them starting from increasing ids.
  std::vector<int32_t> order;
  // A byte trie over their texts; a node's rank is the index in `order` of the token that
  // ends there (-1 if none).
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t rank = -1;
  };
  std::vector<Node> nodes;
  std::array<bool, 256> first_byte{};

  int32_t child(int32_t node, uint8_t b) const {
    const auto& nx = nodes[static_cast<size_t>(node)].next;
    auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(b, int32_t(-1)));
    return (it != nx.end() && it->first == b) ? it->second : -1;
  }
  void insert(std::string_view text, int32_t rank) {
    int32_t node = 0;
    for (char ch : text) {
      const auto b = static_cast<uint8_t>(ch);
      int32_t c = child(node, b);
      if (c < 0) {
        c = static_cast<int32_t>(nodes.size());
        auto& nx = nodes[static_cast<size_t>(node)].next;
        nx.insert(std::lower_bound(nx.begin(), nx.end(), std::make_pair(b, int32_t(-1))), {b, c});
        nodes.emplace_back();
      }
      node = c;
    }
    auto& r = nodes[static_cast<size_t>(node)].rank;
    if (r < 0) r = rank;
  }
};

void Tokenizer::Texts::assign(const std::vector<std::string>& texts) {
  size_t total = 0;
  for (const std::string& t : texts) total += t.size();
  if (total > std::numeric_limits<uint32_t>::max()) fail("the vocabulary's texts take {} bytes (at most 4 GiB)", total);
  chars_.clear();
  chars_.reserve(total);
  offsets_.clear();
  offsets_.reserve(texts.size() + 1);
  offsets_.push_back(0);
  for (const std::string& t : texts) {
    chars_ += t;
    offsets_.push_back(static_cast<uint32_t>(chars_.size()));
  }
}

std::string_view Tokenizer::Texts::at(size_t i) const {
  if (i >= size()) throw std::out_of_range("token id out of range");
  return (*this)[i];
}

std::string Tokenizer::byte_token_piece(std::string_view text) {
  if (text.size() == 6 && text.substr(0, 3) == "<0x" && std::isxdigit(static_cast<unsigned char>(text[3])) &&
      std::isxdigit(static_cast<unsigned char>(text[4])) && text[5] == '>') {
    return std::string(1, static_cast<char>(std::stoi(std::string(text.substr(3, 2)), nullptr, 16)));
  }
  return std::string(text);
}

void Tokenizer::init_common(const Metadata& meta) {
  model_ = meta.get_string("tokenizer.ggml.model").value_or("");
  auto tokens = meta.get_string_array("tokenizer.ggml.tokens");
  if (!tokens || tokens->empty()) fail("the model has no vocabulary (tokenizer.ggml.tokens is missing)");
  const size_t n = tokens->size();
  // Empty texts get a placeholder, as in llama.cpp.
  for (size_t i = 0; i < n; ++i)
    if ((*tokens)[i].empty()) (*tokens)[i] = "[EMPTY_" + std::to_string(i) + "]";
  tokens_.assign(*tokens);
  tokens.reset();

  scores_.assign(n, 0.0f);
  if (auto scores = meta.get_float_array("tokenizer.ggml.scores")) {
    if (scores->size() < n) fail("tokenizer.ggml.scores has {} entries for {} tokens", scores->size(), n);
    for (size_t i = 0; i < n; ++i) scores_[i] = static_cast<float>((*scores)[i]);
  }

  types_.assign(n, TokenType::NORMAL);
  attrs_.assign(n, ATTR_NORMAL);
  if (auto types = meta.get_int_array("tokenizer.ggml.token_type")) {
    if (types->size() < n) fail("tokenizer.ggml.token_type has {} entries for {} tokens", types->size(), n);
    for (size_t i = 0; i < n; ++i) {
      const int64_t t = (*types)[i];
      types_[i] = (t >= 0 && t <= 6) ? static_cast<TokenType>(t) : TokenType::UNDEFINED;
      switch (types_[i]) {
        case TokenType::NORMAL: attrs_[i] = ATTR_NORMAL; break;
        case TokenType::UNKNOWN: attrs_[i] = ATTR_UNKNOWN; break;
        case TokenType::CONTROL: attrs_[i] = ATTR_CONTROL; break;
        case TokenType::USER_DEFINED: attrs_[i] = ATTR_USER_DEFINED; break;
        case TokenType::UNUSED: attrs_[i] = ATTR_UNUSED; break;
        case TokenType::BYTE: attrs_[i] = ATTR_BYTE; break;
        case TokenType::UNDEFINED: attrs_[i] = ATTR_UNDEFINED; break;
      }
    }
  } else {
    // No types in the file: byte tokens are still recognisable by their text (for decoding).
    for (size_t i = 0; i < n; ++i) {
      const std::string_view t = tokens_[i];
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
          std::isxdigit(static_cast<unsigned char>(t[4]))) {
        types_[i] = TokenType::BYTE;
        attrs_[i] = ATTR_BYTE;
      }
    }
  }

  size_t slots = 16;
  while (slots < 2 * n) slots *= 2;
  token_index_.assign(slots, -1);
  for (size_t i = 0; i < n; ++i) {  // a text that appears twice maps to its last id
    size_t h = std::hash<std::string_view>{}(tokens_[i]) & (slots - 1);
    while (token_index_[h] >= 0 && tokens_[static_cast<size_t>(token_index_[h])] != tokens_[i]) h = (h + 1) & (slots - 1);
    token_index_[h] = static_cast<int32_t>(i);
  }

  // Special ids: the subclass's defaults, then the keys (ignored when out of range).
  auto valid = [&](int64_t id) { return id >= 0 && static_cast<size_t>(id) < n; };
  auto read_id = [&](const char* key, int32_t& id) {
    if (id >= 0 && !valid(id)) id = -1;
    if (auto v = meta.get_int(key); v && valid(*v)) id = static_cast<int32_t>(*v);
  };
  int32_t eot = -1, eom = -1;
  read_id("tokenizer.ggml.bos_token_id", bos_);
  read_id("tokenizer.ggml.eos_token_id", eos_);
  read_id("tokenizer.ggml.unknown_token_id", unk_);
  read_id("tokenizer.ggml.eot_token_id", eot);
  read_id("tokenizer.ggml.eom_token_id", eom);
  if (auto v = meta.get_bool("tokenizer.ggml.add_bos_token")) add_bos_ = *v;
  if (auto v = meta.get_bool("tokenizer.ggml.add_eos_token")) add_eos_ = *v;
  if (auto v = meta.get_bool("tokenizer.ggml.add_space_prefix")) add_space_prefix_ = *v;

  // llama.cpp's fix-ups by text.
  std::vector<int32_t> llama_eog;
  for (std::string_view t : k_llama_cpp_eog_texts) {
    if (int32_t id = find_token(t); id >= 0) {
      llama_eog.push_back(id);
      attrs_[static_cast<size_t>(id)] |= ATTR_CONTROL;
    }
  }
  for (std::string_view t : {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}) {
    if (int32_t id = find_token(t); id >= 0) attrs_[static_cast<size_t>(id)] = ATTR_USER_DEFINED;
  }
  auto has = [&](std::string_view t) { return find_token(t) >= 0; };
  if (has("<|end|>") && ((has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")))) {
    // gpt-oss / solar-open: <|end|> ends a message, not the generation.
    attrs_[static_cast<size_t>(find_token("<|end|>"))] = ATTR_USER_DEFINED;
  }
  if (has("</s>") && (has("<|tool_response>") || has("<|plamo:eos|>"))) {
    attrs_[static_cast<size_t>(find_token("</s>"))] = ATTR_NORMAL;
  }

  // End of generation.
  eog_ids_.clear();
  for (int32_t id : {eos_, eot, eom})
    if (id >= 0) eog_ids_.push_back(id);
  for (std::string_view t : k_end_of_turn_texts) {
    const int32_t id = find_token(t);
    if (id < 0) continue;
    if (t == "<|end|>" && attrs_[static_cast<size_t>(id)] == ATTR_USER_DEFINED) continue;  // see above
    eog_ids_.push_back(id);
  }
  std::sort(eog_ids_.begin(), eog_ids_.end());
  eog_ids_.erase(std::unique(eog_ids_.begin(), eog_ids_.end()), eog_ids_.end());

  // Special tokens in llama.cpp's order (std::sort by decreasing length, from increasing ids).
  auto index = std::make_shared<SpecialIndex>();
  for (size_t i = 0; i < n; ++i)
    if (attrs_[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) index->order.push_back(static_cast<int32_t>(i));
  std::sort(index->order.begin(), index->order.end(), [&](int32_t a, int32_t b) {
    return tokens_[static_cast<size_t>(a)].size() > tokens_[static_cast<size_t>(b)].size();
  });
  index->nodes.emplace_back();
  for (size_t r = 0; r < index->order.size(); ++r) {
    const std::string_view t = tokens_[static_cast<size_t>(index->order[r])];
    index->insert(t, static_cast<int32_t>(r));
    index->first_byte[static_cast<uint8_t>(t[0])] = true;
  }
  special_ = std::move(index);
}

TokenType Tokenizer::token_type(int32_t id) const { return types_.at(static_cast<size_t>(id)); }

int32_t Tokenizer::find_token(std::string_view text) const {
  if (token_index_.empty()) return -1;
  const size_t mask = token_index_.size() - 1;
  for (size_t h = std::hash<std::string_view>{}(text) & mask;; h = (h + 1) & mask) {
    const int32_t id = token_index_[h];
    if (id < 0 || tokens_[static_cast<size_t>(id)] == text) return id;
  }
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
  return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id);
}

// ---- special tokens ----------------------------------------------------------------------------
//
// llama.cpp takes the special tokens one at a time, longest first, and splits every piece of
// raw text left so far at each non-overlapping occurrence of the token (searching left to
// right). The same result comes from: find every occurrence of every special token, then go
// through them by (token order, position) and keep an occurrence unless it overlaps one kept
// already. An occurrence that overlaps a kept one would straddle two pieces in llama.cpp and
// so is never found there; any other one is found, since the search of a piece only skips
// text covered by an earlier match of the same token.
//
// Tokens come longest first, so a kept occurrence is at least as long as the one being tried:
// they overlap exactly when the kept one covers its first or its last byte. That makes the
// check O(1) with one flag per byte, and the whole split linear in the number of occurrences.

std::vector<Tokenizer::Fragment> Tokenizer::partition_special(std::string_view text, bool parse_special) const {
  std::vector<Fragment> out;
  if (text.empty()) return out;
  const SpecialIndex& si = *special_;
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();

  // Occurrences, bucketed by token rank (counting sort: count, then fill). Within a rank they
  // come in increasing position since the text is scanned from the left.
  auto for_each_hit = [&](auto&& fn) {
    for (size_t pos = 0; pos < n; ++pos) {
      if (!si.first_byte[s[pos]]) continue;
      int32_t node = 0;
      for (size_t i = pos; i < n; ++i) {
        node = si.child(node, s[i]);
        if (node < 0) break;
        const int32_t rank = si.nodes[static_cast<size_t>(node)].rank;
        if (rank < 0) continue;
        const uint32_t a = attrs_[static_cast<size_t>(si.order[static_cast<size_t>(rank)])];
        if (!parse_special && (a & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;
        fn(static_cast<size_t>(rank), pos);
      }
    }
  };
  std::vector<size_t> bucket_start(si.order.size() + 1, 0);
  size_t n_hits = 0;
  if (!si.order.empty()) {
    for_each_hit([&](size_t rank, size_t) { ++bucket_start[rank + 1]; ++n_hits; });
  }
  if (n_hits == 0) {
    out.push_back({-1, 0, n});
    return out;
  }
  for (size_t r = 1; r < bucket_start.size(); ++r) bucket_start[r] += bucket_start[r - 1];
  std::vector<size_t> hit_pos(n_hits);
  {
    std::vector<size_t> fill(bucket_start.begin(), bucket_start.end() - 1);
    for_each_hit([&](size_t rank, size_t pos) { hit_pos[fill[rank]++] = pos; });
  }

  std::vector<uint8_t> covered(n, 0);
  struct Kept {
    size_t begin, end;
    int32_t id;
  };
  std::vector<Kept> kept;
  for (size_t r = 0; r + 1 < bucket_start.size(); ++r) {
    if (bucket_start[r] == bucket_start[r + 1]) continue;
    const int32_t id = si.order[r];
    const size_t len = tokens_[static_cast<size_t>(id)].size();
    for (size_t h = bucket_start[r]; h < bucket_start[r + 1]; ++h) {
      const size_t b = hit_pos[h], e = b + len;
      if (covered[b] || covered[e - 1]) continue;
      std::fill(covered.begin() + static_cast<std::ptrdiff_t>(b), covered.begin() + static_cast<std::ptrdiff_t>(e), 1);
      kept.push_back({b, e, id});
    }
  }
  std::sort(kept.begin(), kept.end(), [](const Kept& a, const Kept& b) { return a.begin < b.begin; });

  size_t pos = 0;
  for (const Kept& k : kept) {
    if (k.begin > pos) out.push_back({-1, pos, k.begin});
    out.push_back({k.id, k.begin, k.end});
    pos = k.end;
  }
  if (pos < n) out.push_back({-1, pos, n});
  return out;
}

// ---- detokenization -------------------------------------------------------------------------

std::vector<uint8_t> Tokenizer::word_starts(std::span<const int32_t> ids) const {
  const auto word_byte = [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x80 || std::isalnum(u) != 0;
  };
  std::vector<uint8_t> starts(ids.size(), 1);
  bool prev_ends_word = false;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = stands_alone(ids[i]) ? std::string() : token_to_piece(ids[i]);
    if (!piece.empty() && prev_ends_word && word_byte(piece.front())) starts[i] = 0;
    prev_ends_word = !piece.empty() && word_byte(piece.back());
  }
  return starts;
}

std::vector<uint8_t> Tokenizer::sentence_starts(std::span<const int32_t> ids) const {
  const auto ends_sentence = [](const std::string& piece) {
    if (piece.find('\n') != std::string::npos) return true;
    size_t e = piece.size();
    while (e > 0 && std::string_view(" \t\"')]}").find(piece[e - 1]) != std::string_view::npos) --e;
    return e > 0 && (piece[e - 1] == '.' || piece[e - 1] == '!' || piece[e - 1] == '?');
  };
  std::vector<uint8_t> starts(ids.size(), 0);
  bool next_starts = true, prev_control = false;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (stands_alone(ids[i])) {
      starts[i] = 1;
      next_starts = prev_control = true;
      continue;
    }
    const std::string piece = token_to_piece(ids[i]);
    // Closing quotes or brackets after the end stay with the sentence they close.
    const bool closes = !piece.empty() && piece.find_first_not_of("\"')]}") == std::string::npos;
    const bool after_control = prev_control;
    prev_control = false;
    if (next_starts && closes && i > 0 && !after_control) continue;
    if (next_starts || (!piece.empty() && piece.front() == '\n')) starts[i] = 1;
    next_starts = ends_sentence(piece);
  }
  return starts;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  size_t i = 0;
  if (!ids.empty() && bos_ >= 0 && ids[0] == bos_) i = 1;  // a leading BOS is not text
  // SentencePiece: the space put before the first word by the space prefix is not text either.
  bool strip_space = add_space_prefix_ && model_ == "llama";
  for (; i < ids.size(); ++i) {
    std::string piece = token_to_piece(ids[i]);
    if (strip_space && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    strip_space = false;
    out += piece;
  }
  return out;
}

namespace {

// Length of the longest prefix of s that does not end inside an incomplete UTF-8 sequence.
size_t complete_utf8_prefix(const std::string& s) {
  const size_t n = s.size();
  // Look back at most 3 bytes for the start of the last sequence.
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    size_t need = 1;
    if ((c & 0xE0) == 0xC0) need = 2;
    else if ((c & 0xF0) == 0xE0) need = 3;
    else if ((c & 0xF8) == 0xF0) need = 4;
    return back < need ? n - back : n;  // hold the incomplete tail back
  }
  return n;  // only continuation bytes: nothing to wait for
}

}  // namespace

std::string TokenStream::push(int32_t id) {
  const bool after_bos = tok_.bos() >= 0 && prev_ == tok_.bos();
  prev_ = id;
  if (tok_.bos() >= 0 && id == tok_.bos()) return "";  // BOS is not text
  std::string piece = tok_.token_to_piece(id);
  // SentencePiece: the first word of the text carries the space prefix; llama2.c and llama.cpp
  // drop it when printing. That word is the one after BOS, or the first one pushed here (a
  // caller that streams only the generated tokens of a BOS-only prompt).
  if ((after_bos || first_) && tok_.add_space_prefix() && tok_.model_name() == "llama" && !piece.empty() &&
      piece[0] == ' ') {
    piece.erase(0, 1);
  }
  first_ = false;
  pending_ += piece;
  const size_t cut = complete_utf8_prefix(pending_);
  std::string out = pending_.substr(0, cut);
  pending_.erase(0, cut);
  return out;
}

std::string TokenStream::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace dashlm
