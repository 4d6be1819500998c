// Byte-level BPE (tokenizer.ggml.model = "gpt2"), with the rules of llama.cpp's BPE tokenizer:
//   - the text is cut at special tokens first (Tokenizer::partition_special);
//   - each piece of text is split into words by the pre-tokenizer of tokenizer.ggml.pre;
//   - each word's bytes are written with GPT-2's byte -> code point map, then split into
//     characters, and the adjacent pair with the lowest merge rank (tokenizer.ggml.merges,
//     "left right" per line, first line = rank 0) is merged, again and again (ties: leftmost);
//   - every symbol left is looked up in the vocabulary.
// A priority queue of candidate pairs keeps long words O(n log n); words seen before in the same
// call reuse their ids.
#include <functional>
#include <queue>
#include <string_view>
#include <unordered_map>

#include "common/error.h"
#include "model/pretokenize.h"
#include "model/tokenizer.h"

namespace dashlm {

namespace {

// Joins the two sides of a merge into one map key. 0xFF never occurs in UTF-8 text.
constexpr char k_merge_sep = '\xff';

// Merge key -> rank, compact: the keys one after the other in one string, and an
// open-addressing table of key indices (a power of two at least twice the key count). About
// 12 bytes per merge plus its text, against about 70 for a node-based hash map of strings.
class RankTable {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    slots_.assign(cap, -1);
    offsets_.reserve(n + 1);
    ranks_.reserve(n);
    if (offsets_.empty()) offsets_.push_back(0);
  }
  // Adds key -> rank unless the key is already there (the first one wins).
  void insert(std::string_view key, int32_t rank) {
    if (offsets_.empty() || 2 * (ranks_.size() + 1) > slots_.size()) grow();
    size_t i = slot_of(key);
    if (slots_[i] >= 0) return;
    slots_[i] = static_cast<int32_t>(ranks_.size());
    text_.append(key);
    offsets_.push_back(static_cast<uint32_t>(text_.size()));
    ranks_.push_back(rank);
  }
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const int32_t k = slots_[slot_of(key)];
    return k < 0 ? -1 : ranks_[static_cast<size_t>(k)];
  }

 private:
  std::string_view key_at(int32_t k) const {
    const auto b = offsets_[static_cast<size_t>(k)], e = offsets_[static_cast<size_t>(k) + 1];
    return std::string_view(text_).substr(b, e - b);
  }
  // The slot holding key, or the empty slot where it would go.
  size_t slot_of(std::string_view key) const {
    const size_t mask = slots_.size() - 1;
    for (size_t i = std::hash<std::string_view>{}(key) & mask;; i = (i + 1) & mask) {
      const int32_t k = slots_[i];
      if (k < 0 || key_at(k) == key) return i;
    }
  }
  void grow() {
    reserve(std::max<size_t>(16, 2 * ranks_.size() + 2));
    const size_t mask = slots_.size() - 1;
    for (int32_t k = 0; k < static_cast<int32_t>(ranks_.size()); ++k) {
      size_t i = std::hash<std::string_view>{}(key_at(k)) & mask;
      while (slots_[i] >= 0) i = (i + 1) & mask;
      slots_[i] = k;
    }
  }

  std::string text_;
  std::vector<uint32_t> offsets_;  // key k is text_[offsets_[k], offsets_[k + 1])
  std::vector<int32_t> ranks_;
  std::vector<int32_t> slots_;     // key index, -1: empty
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const Metadata& meta) {
    pre_ = meta.get_string("tokenizer.ggml.pre").value_or("");
    pre_type_ = pretokenizer_from_name(pre_);
    if (pre_.empty()) pre_ = "default";
    // llama.cpp's defaults for "gpt2" vocabularies: no BOS unless the file asks for it, except
    // for the Llama 3 pre-tokenizer, which also looks up whole words before merging.
    add_bos_ = pre_type_ == PreTokenizer::Llama3;
    ignore_merges_ = pre_type_ == PreTokenizer::Llama3;
    add_space_prefix_ = false;
    init_common(meta);

    auto merges = meta.get_string_array("tokenizer.ggml.merges");
    if (!merges) fail("the gpt2 tokenizer has no merges (tokenizer.ggml.merges is missing)");
    ranks_.reserve(merges->size());
    std::string key;
    for (size_t i = 0; i < merges->size(); ++i) {
      const std::string& m = (*merges)[i];
      // The two sides are split at the first space after the first byte.
      const size_t sp = m.find(' ', 1);
      key.clear();
      if (sp != std::string::npos) {
        key.append(m, 0, sp);
        key += k_merge_sep;
        key.append(m, sp + 1, std::string::npos);
      } else {
        key += k_merge_sep;
      }
      ranks_.insert(key, static_cast<int32_t>(i));  // the first of duplicate merges wins
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 2);
    if (add_bos && bos_ >= 0) out.push_back(bos_);
    std::unordered_map<std::string, std::vector<int32_t>> cache;  // byte-encoded word -> ids
    std::string encoded;
    for (const Fragment& f : partition_special(text, parse_special)) {
      if (f.id >= 0) {
        out.push_back(f.id);
        continue;
      }
      for (const std::string& word : pretokenize(pre_type_, text.substr(f.begin, f.end - f.begin))) {
        encoded.clear();
        for (char c : word) encoded += gpt2_byte_to_utf8(static_cast<uint8_t>(c));
        auto it = cache.find(encoded);
        if (it == cache.end()) {
          std::vector<int32_t> ids;
          encode_word(encoded, ids);
          it = cache.emplace(encoded, std::move(ids)).first;
        }
        out.insert(out.end(), it->second.begin(), it->second.end());
      }
    }
    return out;
  }

  std::string token_to_piece(int32_t id) const override {
    if (id < 0 || id >= n_vocab()) fail("token id {} is out of range (vocabulary of {})", id, n_vocab());
    const uint32_t a = attr(id);
    const std::string_view text = tokens_[static_cast<size_t>(id)];
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) return std::string(text);
    if (a & ATTR_NORMAL) {
      // Undo the byte -> code point map; a code point outside it stays as it is.
      std::string out;
      out.reserve(text.size());
      for (uint32_t cp : utf8_to_codepoints(text)) {
        const int b = gpt2_codepoint_to_byte(cp);
        if (b >= 0) {
          out += static_cast<char>(b);
        } else {
          append_utf8(out, cp);
        }
      }
      return out;
    }
    if (a & ATTR_BYTE) return byte_token_piece(text);
    return "";
  }

 private:
  struct Symbol {
    size_t offset, n;  // n = 0 once merged into the symbol on its left
    int32_t prev, next;
  };
  struct Pair {
    int32_t rank;
    int32_t left, right;
    size_t size;  // bytes of the two symbols when the pair was queued
  };
  struct PairOrder {
    // Lowest rank first; equal ranks: leftmost first (llama.cpp's order).
    bool operator()(const Pair& a, const Pair& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };

  int32_t merge_rank(std::string_view left, std::string_view right, std::string& key) const {
    key.assign(left);
    key += k_merge_sep;
    key.append(right);
    return ranks_.find(key);
  }

  void encode_word(const std::string& word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      if (int32_t id = find_token(word); id >= 0) {
        out.push_back(id);
        return;
      }
    }
    std::vector<Symbol> sym;
    sym.reserve(word.size());
    for (size_t off = 0; off < word.size();) {
      const size_t len = std::min(utf8_len_from_lead(static_cast<unsigned char>(word[off])), word.size() - off);
      const auto i = static_cast<int32_t>(sym.size());
      sym.push_back({off, len, i - 1, off + len == word.size() ? -1 : i + 1});
      off += len;
    }

    const std::string_view w(word);
    std::string key;
    std::priority_queue<Pair, std::vector<Pair>, PairOrder> queue;
    auto try_pair = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const Symbol& a = sym[static_cast<size_t>(l)];
      const Symbol& b = sym[static_cast<size_t>(r)];
      const int32_t rank = merge_rank(w.substr(a.offset, a.n), w.substr(b.offset, b.n), key);
      if (rank < 0) return;
      queue.push({rank, l, r, a.n + b.n});
    };
    for (int32_t i = 1; i < static_cast<int32_t>(sym.size()); ++i) try_pair(i - 1, i);

    while (!queue.empty()) {
      const Pair p = queue.top();
      queue.pop();
      Symbol& l = sym[static_cast<size_t>(p.left)];
      Symbol& r = sym[static_cast<size_t>(p.right)];
      // Stale: one side was merged away or has grown since the pair was queued.
      if (l.n == 0 || r.n == 0 || l.n + r.n != p.size) continue;
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[static_cast<size_t>(r.next)].prev = p.left;
      try_pair(l.prev, p.left);
      try_pair(p.left, l.next);
    }

    for (int32_t i = 0; i != -1; i = sym[static_cast<size_t>(i)].next) {
      const Symbol& s = sym[static_cast<size_t>(i)];
      const std::string_view piece = w.substr(s.offset, s.n);
      if (int32_t id = find_token(piece); id >= 0) {
        out.push_back(id);
        continue;
      }
      // Not a token (a vocabulary without all 256 byte tokens): llama.cpp tries each byte of
      // the encoded text as a token of its own and drops the ones that are not.
      for (char c : piece) {
        if (int32_t id = find_token(std::string_view(&c, 1)); id >= 0) out.push_back(id);
      }
    }
  }

  PreTokenizer pre_type_ = PreTokenizer::Default;
  bool ignore_merges_ = false;
  RankTable ranks_;  // "left\xffright" -> rank
};

}  // namespace

namespace detail {
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const Metadata& meta) { return std::make_unique<BpeTokenizer>(meta); }
}  // namespace detail

}  // namespace dashlm
