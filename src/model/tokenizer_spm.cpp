// SentencePiece-style BPE (tokenizer.ggml.model = "llama"), with the rules of llama.cpp's SPM
// tokenizer:
//   - the text is cut at special tokens first (Tokenizer::partition_special);
//   - a piece of text that starts the prompt or follows a special token gets a space in front
//     when add_space_prefix is set; spaces are written as U+2581 ("▁");
//   - the piece is split into UTF-8 characters, then the adjacent pair whose concatenation is
//     the vocabulary token with the highest score is merged, again and again (ties: the
//     leftmost pair), until no pair is a token;
//   - a symbol left that is not a token is written as its bytes, <0xNN> tokens.
// A priority queue of candidate pairs keeps this O(n log n) for long prompts.
#include <array>
#include <cstdio>
#include <queue>

#include "common/error.h"
#include "model/pretokenize.h"
#include "model/tokenizer.h"

namespace dashlm {

namespace {

const std::string k_space_marker = "\xe2\x96\x81";  // U+2581

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(const Metadata& meta) {
    // llama.cpp's defaults for "llama" vocabularies; keys in the file override them.
    bos_ = 1;
    eos_ = 2;
    unk_ = 0;
    add_bos_ = true;
    add_space_prefix_ = true;
    init_common(meta);
    pre_ = meta.get_string("tokenizer.ggml.pre").value_or("default");

    // GGUF vocabularies write spaces as U+2581. A vocabulary with plain spaces and no U+2581
    // (a llama.cpp-style conversion that did not escape them) is matched with plain spaces.
    bool has_marker = false, has_space = false;
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const std::string_view t = tokens_[i];
      has_marker = has_marker || t.find(k_space_marker) != std::string::npos;
      has_space = has_space || t.find(' ') != std::string::npos;
    }
    escape_spaces_ = has_marker || !has_space;

    for (int b = 0; b < 256; ++b) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "<0x%02X>", b);
      int32_t id = find_token(hex);
      if (id < 0) id = find_token(std::string(1, static_cast<char>(b)));
      if (id < 0) id = unk_;  // llama.cpp would stop here; <unk> is the nearest thing
      byte_tokens_[static_cast<size_t>(b)] = id;
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 2);
    if (add_bos && bos_ >= 0) out.push_back(bos_);
    bool after_special = true;  // the start of the text counts as following a special token
    std::string piece;
    for (const Fragment& f : partition_special(text, parse_special)) {
      if (f.id >= 0) {
        out.push_back(f.id);
        after_special = true;
        continue;
      }
      piece.clear();
      if (add_space_prefix_ && after_special) piece = escape_spaces_ ? k_space_marker : " ";
      const std::string_view raw = text.substr(f.begin, f.end - f.begin);
      if (escape_spaces_) {
        for (char c : raw) {
          if (c == ' ') {
            piece += k_space_marker;
          } else {
            piece += c;
          }
        }
      } else {
        piece += raw;
      }
      encode_piece(piece, out);
      after_special = false;
    }
    return out;
  }

  std::string token_to_piece(int32_t id) const override {
    if (id < 0 || id >= n_vocab()) fail("token id {} is out of range (vocabulary of {})", id, n_vocab());
    const uint32_t a = attr(id);
    const std::string_view text = tokens_[static_cast<size_t>(id)];
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) return std::string(text);
    if (a & ATTR_NORMAL) {
      if (!escape_spaces_) return std::string(text);
      std::string out;
      out.reserve(text.size());
      for (size_t i = 0; i < text.size();) {
        if (text.compare(i, k_space_marker.size(), k_space_marker) == 0) {
          out += ' ';
          i += k_space_marker.size();
        } else {
          out += text[i++];
        }
      }
      return out;
    }
    if (a & ATTR_BYTE) return byte_token_piece(text);
    return "";  // unused / undefined tokens have no text
  }

 private:
  struct Symbol {
    size_t offset;   // into the piece
    size_t n;        // bytes; 0 once merged into the symbol on its left
    int32_t prev, next;
  };
  struct Pair {
    float score;
    int32_t left, right;
    size_t size;  // bytes of the two symbols when the pair was queued
  };
  struct PairOrder {
    // Highest score first; equal scores: leftmost first (llama.cpp's order).
    bool operator()(const Pair& a, const Pair& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  void encode_piece(const std::string& text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::vector<Symbol> sym;
    sym.reserve(text.size());
    for (size_t off = 0; off < text.size();) {
      const size_t len = std::min(utf8_len_from_lead(static_cast<unsigned char>(text[off])), text.size() - off);
      const auto i = static_cast<int32_t>(sym.size());
      sym.push_back({off, len, i - 1, off + len == text.size() ? -1 : i + 1});
      off += len;
    }

    std::priority_queue<Pair, std::vector<Pair>, PairOrder> queue;
    auto try_pair = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const size_t size = sym[static_cast<size_t>(l)].n + sym[static_cast<size_t>(r)].n;
      const int32_t id = find_token(std::string_view(text).substr(sym[static_cast<size_t>(l)].offset, size));
      if (id < 0) return;
      queue.push({scores_[static_cast<size_t>(id)], l, r, size});
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
      const std::string_view piece = std::string_view(text).substr(s.offset, s.n);
      const int32_t id = find_token(piece);
      if (id >= 0) {
        out.push_back(id);
        continue;
      }
      for (char c : piece) {  // byte fallback
        const int32_t b = byte_tokens_[static_cast<uint8_t>(c)];
        if (b >= 0) out.push_back(b);
      }
    }
  }

  bool escape_spaces_ = true;
  std::array<int32_t, 256> byte_tokens_{};
};

}  // namespace

namespace detail {
std::unique_ptr<Tokenizer> make_spm_tokenizer(const Metadata& meta) { return std::make_unique<SpmTokenizer>(meta); }
}  // namespace detail

}  // namespace dashlm
