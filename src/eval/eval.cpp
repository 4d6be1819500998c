#include "eval/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include <fmt/format.h>

#include "common/error.h"
#include "common/finite.h"
#include "common/json.h"
#include "common/lists.h"
#include "runtime/sampler.h"
#include "runtime/session.h"

namespace dashlm::eval {

// ---- metrics ---------------------------------------------------------------------------------

namespace {

// log sum exp of the logits, in double precision.
double log_sum_exp(std::span<const float> logits) {
  double mx = -INFINITY;
  for (float v : logits) mx = std::max(mx, static_cast<double>(v));
  double s = 0;
  for (float v : logits) s += std::exp(static_cast<double>(v) - mx);
  return mx + std::log(s);
}

}  // namespace

double log_prob(std::span<const float> logits, int32_t token) {
  if (token < 0 || static_cast<size_t>(token) >= logits.size()) fail("log_prob: token {} outside the vocabulary", token);
  return static_cast<double>(logits[static_cast<size_t>(token)]) - log_sum_exp(logits);
}

double mean_nll(std::span<const float> rows, int64_t n_vocab, std::span<const int32_t> targets) {
  if (targets.empty()) return 0.0;
  if (rows.size() != targets.size() * static_cast<size_t>(n_vocab)) fail("mean_nll: {} logits for {} targets", rows.size(), targets.size());
  double s = 0;
  for (size_t i = 0; i < targets.size(); ++i) s -= log_prob(rows.subspan(i * static_cast<size_t>(n_vocab), static_cast<size_t>(n_vocab)), targets[i]);
  return s / static_cast<double>(targets.size());
}

double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits) {
  if (p_logits.size() != q_logits.size() || p_logits.empty()) fail("kl_divergence: logits of different sizes");
  const double lp = log_sum_exp(p_logits), lq = log_sum_exp(q_logits);
  double kl = 0;
  for (size_t i = 0; i < p_logits.size(); ++i) {
    const double log_p = static_cast<double>(p_logits[i]) - lp;
    const double log_q = static_cast<double>(q_logits[i]) - lq;
    const double p = std::exp(log_p);
    if (p > 0) kl += p * (log_p - log_q);
  }
  return kl < 0 ? 0.0 : kl;  // rounding can make a zero divergence slightly negative (a NaN stays NaN)
}

int64_t common_prefix(std::span<const int32_t> a, std::span<const int32_t> b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return static_cast<int64_t>(i);
}

std::string normalize_answer(std::string_view s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += (u >= 'A' && u <= 'Z') ? static_cast<char>(u - 'A' + 'a') : c;
  }
  return out;
}

bool answer_found(std::string_view generated, std::string_view expected) {
  const std::string e = normalize_answer(expected);
  return !e.empty() && normalize_answer(generated).find(e) != std::string::npos;
}

namespace {

bool is_alnum(char c) {
  const auto u = static_cast<unsigned char>(c);
  return (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z');
}

// Where the normalised needle first occurs in the normalised text as a whole word (no letter or
// digit on either side); npos when it does not.
size_t find_word(const std::string& text, const std::string& word) {
  if (word.empty()) return std::string::npos;
  for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + 1)) {
    const bool left = at == 0 || !is_alnum(text[at - 1]);
    const bool right = at + word.size() >= text.size() || !is_alnum(text[at + word.size()]);
    if (left && right) return at;
  }
  return std::string::npos;
}

}  // namespace

bool answer_found_first(std::string_view generated, std::string_view expected, const std::vector<std::string>& wrong) {
  const std::string g = normalize_answer(generated);
  const size_t at = find_word(g, normalize_answer(expected));
  if (at == std::string::npos) return false;
  return std::none_of(wrong.begin(), wrong.end(), [&](const std::string& w) { return find_word(g, normalize_answer(w)) < at; });
}

// ---- random numbers ---------------------------------------------------------------------------

uint64_t Rng::next() {  // SplitMix64
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t Rng::below(uint64_t n) {
  if (n == 0) fail("Rng::below(0)");
  // Rejection sampling: no modulo bias.
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = next();
  while (x >= limit);
  return x % n;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

uint64_t sample_seed(uint64_t seed, std::string_view task, int64_t length, int index) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the task name, then mixed with the numbers
  for (char c : task) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  Rng r(h ^ seed);
  r.next();
  Rng r2(r.next() ^ static_cast<uint64_t>(length) * 0x9E3779B97F4A7C15ull);
  r2.next();
  return r2.next() ^ static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ull;
}

// ---- datasets -----------------------------------------------------------------------------

std::vector<const Book*> Dataset::with_role(const std::string& role) const {
  std::vector<const Book*> out;
  for (const Book& b : books) {
    if (b.role == role) out.push_back(&b);
  }
  return out;
}

namespace {

// The non-empty lines of a text file, with their 1-based line numbers.
std::vector<std::pair<int64_t, std::string>> read_numbered_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path);
  std::vector<std::pair<int64_t, std::string>> lines;
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) lines.emplace_back(n, std::move(line));
  }
  return lines;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> lines;
  for (auto& [n, line] : read_numbered_lines(path)) lines.push_back(std::move(line));
  return lines;
}

}  // namespace

Dataset load_dataset(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string hint = "run scripts/build-datasets (or give --dataset-dir)";
  if (!fs::is_directory(dir)) fail("no datasets in {}: {}", dir, hint);
  const fs::path manifest = fs::path(dir) / "manifest.json";
  if (!fs::exists(manifest)) fail("{} is missing: {}", manifest.string(), hint);
  Dataset ds;
  ds.dir = dir;
  // Every problem of the files names the file, the line or entry, and the key.
  try {
    const nlohmann::json mj = read_json_file(manifest.string());
    const JsonObject m(mj, manifest.string());
    ds.minimal = m.boolean_or("minimal", false);
    const nlohmann::json& books = m.array("books");
    for (size_t i = 0; i < books.size(); ++i) {
      const JsonObject b(books[i], fmt::format("{}: books[{}]", manifest.string(), i));
      Book book;
      book.id = b.string("id");
      book.title = b.string_or("title", book.id);
      book.role = b.string_or("role", "eval");
      book.group = b.string_or("group", book.id);
      const fs::path p = fs::path(dir) / "books" / (book.id + ".txt");
      if (!fs::exists(p)) fail("{} is missing", p.string());
      book.paragraphs = read_lines(p.string());
      if (!book.paragraphs.empty()) ds.books.push_back(std::move(book));
    }
    std::sort(ds.books.begin(), ds.books.end(), [](const Book& a, const Book& b) { return a.id < b.id; });
    const fs::path facts = fs::path(dir) / "facts.jsonl";
    if (!fs::exists(facts)) fail("{} is missing", facts.string());
    for (const auto& [n, line] : read_numbered_lines(facts.string())) {
      const std::string where = fmt::format("{} line {}", facts.string(), n);
      const nlohmann::json j = parse_json(line, where);
      const JsonObject f(j, where);
      ds.facts.push_back({f.string_or("table", ""), f.string("key"), f.string("statement"), f.string("question"),
                          f.string("answer")});
    }
  } catch (const Error& e) {
    fail("{}: {}", e.what(), hint);
  }
  if (ds.books.empty()) fail("{} lists no books: {}", manifest.string(), hint);
  return ds;
}

Dataset dataset_from_text(const std::string& path, const std::string& text) {
  Dataset ds;
  ds.dir = path;
  Book b;
  b.id = std::filesystem::path(path).filename().string();
  b.title = b.id;
  b.role = "heldout";
  b.group = b.id;
  // Paragraphs: blank-line separated blocks, hard-wrapped lines joined with spaces.
  std::stringstream ss(text);
  std::string line, cur;
  auto flush = [&] {
    if (!cur.empty()) b.paragraphs.push_back(cur);
    cur.clear();
  };
  while (std::getline(ss, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t a = line.find_first_not_of(" \t");
    if (a == std::string::npos) {
      flush();
      continue;
    }
    const std::string t = line.substr(a, line.find_last_not_of(" \t") - a + 1);
    cur += cur.empty() ? t : " " + t;
  }
  flush();
  if (b.paragraphs.empty()) fail("{} has no text", path);
  ds.books.push_back(std::move(b));
  return ds;
}

std::vector<std::string> split_sentences(const std::string& paragraph) {
  std::vector<std::string> out;
  size_t begin = 0;
  const size_t n = paragraph.size();
  for (size_t i = 0; i < n; ++i) {
    const char c = paragraph[i];
    if (c != '.' && c != '!' && c != '?' && c != ';') continue;
    size_t j = i + 1;
    while (j < n && (paragraph[j] == '"' || paragraph[j] == '\'' || paragraph[j] == ')' || paragraph[j] == ']')) ++j;
    if (j < n && paragraph[j] == ' ' && j > begin) {
      out.push_back(paragraph.substr(begin, j - begin));
      while (j < n && paragraph[j] == ' ') ++j;
      begin = j;
      i = j - 1;
    }
  }
  if (begin < n) out.push_back(paragraph.substr(begin));
  // Very long units (lists, verse without stops) are cut at a space so that needles can be placed
  // with a useful resolution.
  std::vector<std::string> cut;
  for (std::string& s : out) {
    while (s.size() > 600) {
      size_t at = s.rfind(' ', 400);
      if (at == std::string::npos || at == 0) break;
      cut.push_back(s.substr(0, at));
      s.erase(0, at + 1);
    }
    cut.push_back(std::move(s));
  }
  return cut;
}

// ---- samples ------------------------------------------------------------------------------

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"needle",      "passkey",      "multi-needle", "variable-tracking",
                                                 "aggregation", "continuation", "fidelity"};
  return names;
}

std::string task_names_text() {
  std::string s;
  for (const std::string& t : task_names()) s += (s.empty() ? "" : ", ") + t;
  return s;
}

bool is_retrieval_task(const std::string& task) {
  return task == "needle" || task == "passkey" || task == "multi-needle" || task == "variable-tracking" || task == "aggregation";
}

Planted plant_needles(const Haystack& hay, const std::vector<std::vector<int32_t>>& needles, const std::vector<double>& depths) {
  if (needles.size() != depths.size()) fail("plant_needles: {} needles, {} depths", needles.size(), depths.size());
  const auto h = static_cast<int64_t>(hay.ids.size());
  // The boundary nearest to each depth.
  std::vector<int64_t> at(needles.size());
  for (size_t i = 0; i < needles.size(); ++i) {
    const double target = std::clamp(depths[i], 0.0, 1.0) * static_cast<double>(h);
    int64_t best = 0;
    double best_d = INFINITY;
    for (int64_t b : hay.boundaries) {
      const double d = std::fabs(static_cast<double>(b) - target);
      if (d < best_d) {
        best_d = d;
        best = b;
      }
    }
    at[i] = best;
  }
  std::vector<size_t> order(needles.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return depths[a] < depths[b]; });
  Planted p;
  p.starts.assign(needles.size(), 0);
  int64_t copied = 0;
  for (size_t i : order) {
    const int64_t b = std::max(at[i], copied);
    p.ids.insert(p.ids.end(), hay.ids.begin() + copied, hay.ids.begin() + b);
    copied = b;
    p.starts[i] = static_cast<int64_t>(p.ids.size());
    p.ids.insert(p.ids.end(), needles[i].begin(), needles[i].end());
  }
  p.ids.insert(p.ids.end(), hay.ids.begin() + copied, hay.ids.end());
  return p;
}

SampleBuilder::SampleBuilder(const Tokenizer& tok, const Dataset& ds, SampleOptions opt) : tok_(tok), ds_(ds), opt_(std::move(opt)) {
  books_ = ds_.with_role(opt_.role);
  if (books_.empty()) fail("the dataset {} has no books of role '{}'", ds_.dir, opt_.role);
  if (opt_.n_samples < 1) fail("--samples must be >= 1");
}

std::vector<int32_t> SampleBuilder::encode_unit(const std::string& text, const std::string& sep) const {
  // SentencePiece vocabularies with a space prefix put the space before every encoded text
  // themselves: a unit that follows a space is encoded without it.
  if (tok_.add_space_prefix() && tok_.model_name() == "llama" && sep != "\n") return tok_.encode(text, false, false);
  return tok_.encode(sep + text, false, false);
}

Haystack SampleBuilder::haystack(const Book& book, size_t start, int64_t n) const {
  Haystack h;
  h.boundaries.push_back(0);
  if (n <= 0) return h;
  const size_t np = book.paragraphs.size();
  bool first = true;
  size_t empty_run = 0;
  for (size_t k = 0; static_cast<int64_t>(h.ids.size()) < n; ++k) {
    const std::string& para = book.paragraphs[(start + k) % np];
    bool para_start = true;
    const size_t before = h.ids.size();
    for (const std::string& unit : split_sentences(para)) {
      const std::string sep = first ? "" : para_start ? "\n" : " ";
      const std::vector<int32_t> ids = encode_unit(unit, sep);
      h.ids.insert(h.ids.end(), ids.begin(), ids.end());
      first = para_start = false;
      if (static_cast<int64_t>(h.ids.size()) >= n) break;
      h.boundaries.push_back(static_cast<int64_t>(h.ids.size()));
    }
    empty_run = h.ids.size() == before ? empty_run + 1 : 0;
    if (empty_run > np) fail("book {} has no text to tokenize", book.id);
  }
  h.ids.resize(static_cast<size_t>(n));
  h.boundaries.push_back(n);
  return h;
}

const Book& SampleBuilder::pick_book(Rng& rng, int64_t n_tokens, size_t* start) const {
  // A group (an author) first, then one of its books, so that no author dominates.
  std::vector<std::string> groups;
  for (const Book* bk : books_) {
    if (std::find(groups.begin(), groups.end(), bk->group) == groups.end()) groups.push_back(bk->group);
  }
  const std::string& group = groups[rng.below(groups.size())];
  std::vector<const Book*> in_group;
  for (const Book* bk : books_) {
    if (bk->group == group) in_group.push_back(bk);
  }
  const Book& b = *in_group[rng.below(in_group.size())];
  // Start at a paragraph from which the text lasts for the tokens wanted (about 4 bytes a
  // token, with a margin), so that a sample rarely wraps around to the book's beginning.
  std::vector<size_t> offsets(b.paragraphs.size() + 1, 0);
  for (size_t i = 0; i < b.paragraphs.size(); ++i) offsets[i + 1] = offsets[i] + b.paragraphs[i].size() + 1;
  const auto need = static_cast<size_t>(n_tokens) * 6;
  size_t last = 0;
  while (last + 1 < b.paragraphs.size() && offsets.back() - offsets[last + 1] >= need) ++last;
  *start = static_cast<size_t>(rng.below(last + 1));
  return b;
}

std::vector<int32_t> SampleBuilder::prefix() const {
  std::vector<int32_t> ids;
  if (tok_.add_bos_default() && tok_.bos() >= 0) ids.push_back(tok_.bos());
  if (opt_.chat && !opt_.chat_before.empty()) {
    const auto t = tok_.encode(opt_.chat_before, false, true);
    ids.insert(ids.end(), t.begin(), t.end());
  }
  return ids;
}

std::vector<int32_t> SampleBuilder::query_tokens(const std::string& text) const {
  return tok_.encode(text + (opt_.chat ? opt_.chat_after : ""), false, opt_.chat);
}

Sample SampleBuilder::build(const std::string& task, int64_t length, int index) const {
  if (length <= 0) fail("length must be positive");
  if (is_retrieval_task(task)) return retrieval(task, length, index);
  if (task == "continuation") return continuation(length, index);
  if (task == "fidelity") return fidelity(length, index);
  fail("unknown task '{}' ({})", task, task_names_text());
}

namespace {

// variable-tracking: variables in each of its two chains.
constexpr size_t kVarChain = 4;
// aggregation: the words carved on the door; none is part of another or of a common word.
constexpr const char* kAggregationWords[] = {
    "anchor", "basket", "candle", "dragon", "falcon", "hammer", "island", "jacket", "kettle",  "lantern",
    "marble", "orchid", "pepper", "quartz", "ribbon", "saddle", "tunnel", "violin", "walnut",  "zebra",
    "bishop", "copper", "dolphin", "glacier", "harbor", "jasmine", "lemon", "meadow", "nutmeg", "otter",
    "parrot", "raven",  "thimble", "umbrella", "velvet", "willow", "cobalt", "mango", "pirate", "tulip"};

// The depth of sample `index` of n: evenly from 0 (start of the document) to 1 (its end).
double spread_depth(int index, int n) {
  if (n <= 1) return 0.5;
  return static_cast<double>(index % n) / static_cast<double>(n - 1);
}

}  // namespace

Sample SampleBuilder::retrieval(const std::string& task, int64_t length, int index) const {
  Rng rng(sample_seed(opt_.seed, task, 0, index));
  Sample s;
  s.task = task;
  s.length = length;
  s.index = index;
  s.n_generate = opt_.n_generate;
  std::vector<double> depths;
  std::string query_text;
  if (task == "passkey") {
    const int digits = 5 + static_cast<int>(rng.below(3));
    uint64_t lo = 1;
    for (int i = 1; i < digits; ++i) lo *= 10;
    const std::string key = std::to_string(lo + rng.below(9 * lo));
    s.needles = {fmt::format("The pass key is {}. Remember it.", key)};
    s.answers = {key};
    s.question = "What is the pass key?";
    depths = {spread_depth(index, opt_.n_samples)};
    query_text = opt_.chat ? "\n\nWhat is the pass key? Answer with the number only." : "\n\nWhat is the pass key? The pass key is";
  } else if (task == "variable-tracking") {
    // Two chains of kVarChain assignments (VAR A = 12345. VAR B = VAR A. ...), interleaved in
    // order at random depths; the question asks for the value of the first chain's last
    // variable, and the second chain's value is a wrong answer planted beside it.
    std::vector<std::string> names;
    while (names.size() < 2 * kVarChain) {
      std::string n;
      for (int k = 0; k < 5; ++k) n += static_cast<char>('A' + rng.below(26));
      if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
    }
    std::string values[2];
    do {
      for (std::string& v : values) v = std::to_string(10000 + rng.below(90000));
    } while (values[0] == values[1]);
    std::vector<std::string> chain[2];
    for (int c = 0; c < 2; ++c) {
      const std::string* var = &names[static_cast<size_t>(c) * kVarChain];
      chain[c].push_back(fmt::format("VAR {} = {}.", var[0], values[c]));
      for (size_t k = 1; k < kVarChain; ++k) chain[c].push_back(fmt::format("VAR {} = VAR {}.", var[k], var[k - 1]));
    }
    // A random interleaving that keeps each chain in order, at sorted random depths.
    size_t next[2] = {0, 0};
    while (next[0] < kVarChain || next[1] < kVarChain) {
      const int c = next[0] == kVarChain ? 1 : next[1] == kVarChain ? 0 : static_cast<int>(rng.below(2));
      s.needles.push_back(chain[c][next[c]++]);
    }
    for (size_t k = 0; k < s.needles.size(); ++k) depths.push_back(rng.uniform());
    std::sort(depths.begin(), depths.end());
    const std::string& last = names[kVarChain - 1];
    s.answers = {values[0]};
    s.wrong_answers = {values[1]};
    s.question = fmt::format("What is the value of VAR {}?", last);
    query_text = opt_.chat ? fmt::format("\n\nThe text above assigns values to variables, some by copying another variable.\n"
                                         "Question: {} Answer with the number only.",
                                         s.question)
                           : fmt::format("\n\nThe text above assigns values to variables, some by copying another variable.\n"
                                         "Question: {}\nAnswer: VAR {} =",
                                         s.question, last);
  } else if (task == "aggregation") {
    // Four words carved on a door 4, 2, 1 and 1 times at random depths: which word most often?
    std::vector<size_t> picked;
    const size_t n_words = std::size(kAggregationWords);
    while (picked.size() < 4) {
      const size_t w = rng.below(n_words);
      if (std::find(picked.begin(), picked.end(), w) == picked.end()) picked.push_back(w);
    }
    const int counts[] = {4, 2, 1, 1};
    std::vector<std::string> planted;
    for (size_t k = 0; k < picked.size(); ++k)
      for (int c = 0; c < counts[k]; ++c) planted.push_back(fmt::format("Someone carved the word \"{}\" into the old oak door.", kAggregationWords[picked[k]]));
    // Shuffled (Fisher-Yates), then at sorted random depths.
    for (size_t k = planted.size(); k > 1; --k) std::swap(planted[k - 1], planted[rng.below(k)]);
    s.needles = planted;
    for (size_t k = 0; k < s.needles.size(); ++k) depths.push_back(rng.uniform());
    std::sort(depths.begin(), depths.end());
    s.answers = {kAggregationWords[picked[0]]};
    for (size_t k = 1; k < picked.size(); ++k) s.wrong_answers.push_back(kAggregationWords[picked[k]]);
    s.question = "Which word was carved into the old oak door most often?";
    query_text = opt_.chat ? fmt::format("\n\nAnswer the question using the text above.\nQuestion: {} Answer with the word only.", s.question)
                           : fmt::format("\n\nQuestion: {}\nAnswer: the word", s.question);
  } else {
    if (ds_.facts.empty()) fail("the dataset {} has no facts (facts.jsonl): run scripts/build-datasets", ds_.dir);
    if (task == "needle") {
      const Fact& f = ds_.facts[rng.below(ds_.facts.size())];
      s.needles = {f.statement};
      s.answers = {f.answer};
      s.question = f.question;
      depths = {spread_depth(index, opt_.n_samples)};
      query_text = opt_.chat ? fmt::format("\n\nAnswer the question using the text above.\nQuestion: {}", f.question)
                             : fmt::format("\n\nQuestion: {}\nAnswer:", f.question);
    } else {  // multi-needle: four facts at random depths; the question needs two of them
      const size_t n_facts = std::min<size_t>(4, ds_.facts.size());
      std::vector<size_t> picked;
      for (int tries = 0; picked.size() < n_facts && tries < 1000; ++tries) {
        const size_t c = rng.below(ds_.facts.size());
        const bool clash = std::any_of(picked.begin(), picked.end(), [&](size_t p) {
          return ds_.facts[p].key == ds_.facts[c].key || ds_.facts[p].answer == ds_.facts[c].answer;
        });
        if (!clash) picked.push_back(c);
      }
      if (picked.size() < 2) fail("multi-needle needs at least two distinct facts in the dataset");
      for (size_t p : picked) {
        s.needles.push_back(ds_.facts[p].statement);
        depths.push_back(rng.uniform());
      }
      const size_t a = rng.below(picked.size());
      size_t b = rng.below(picked.size() - 1);
      if (b >= a) ++b;
      const Fact& fa = ds_.facts[picked[a]];
      const Fact& fb = ds_.facts[picked[b]];
      s.answers = {fa.answer, fb.answer};
      s.question = fa.question + " " + fb.question;
      query_text = opt_.chat ? fmt::format("\n\nAnswer both questions using the text above.\n1. {}\n2. {}", fa.question, fb.question)
                             : fmt::format("\n\nQuestions:\n1. {}\n2. {}\nAnswers:\n1.", fa.question, fb.question);
    }
  }
  const std::vector<int32_t> pre = prefix();
  s.query = query_tokens(query_text);
  std::vector<std::vector<int32_t>> needle_ids;
  int64_t fixed = static_cast<int64_t>(pre.size() + s.query.size());
  for (const std::string& n : s.needles) {
    needle_ids.push_back(encode_unit(n, " "));
    fixed += static_cast<int64_t>(needle_ids.back().size());
  }
  const int64_t h = length - fixed;
  if (h < 16) fail("length {} is too short for the {} task: its question and planted text take {} tokens", length, task, fixed);
  size_t start = 0;
  const Book& book = pick_book(rng, h, &start);
  s.book = book.id;
  const Haystack hay = haystack(book, start, h);
  const Planted planted = plant_needles(hay, needle_ids, depths);
  s.document = pre;
  s.document.insert(s.document.end(), planted.ids.begin(), planted.ids.end());
  // Where each needle landed: the haystack before it, as a fraction of the haystack.
  for (size_t i = 0; i < planted.starts.size(); ++i) {
    int64_t needles_before = 0;
    for (size_t j = 0; j < planted.starts.size(); ++j) {
      if (planted.starts[j] < planted.starts[i]) needles_before += static_cast<int64_t>(needle_ids[j].size());
    }
    s.needle_offsets.push_back(static_cast<int64_t>(pre.size()) + planted.starts[i]);
    s.needle_lengths.push_back(static_cast<int64_t>(needle_ids[i].size()));
    s.depths.push_back(static_cast<double>(planted.starts[i] - needles_before) / static_cast<double>(h));
  }
  s.closed_book = pre;
  s.closed_book.insert(s.closed_book.end(), s.query.begin(), s.query.end());
  return s;
}

Sample SampleBuilder::continuation(int64_t length, int index) const {
  Rng rng(sample_seed(opt_.seed, "continuation", 0, index));
  Sample s;
  s.task = "continuation";
  s.length = length;
  s.index = index;
  // Raw text, no chat turn: the model continues a book.
  std::vector<int32_t> pre;
  if (tok_.add_bos_default() && tok_.bos() >= 0) pre.push_back(tok_.bos());
  const int64_t n_cont = std::min<int64_t>(opt_.continuation_tokens, length / 2);
  const int64_t n_text = length - static_cast<int64_t>(pre.size());
  if (n_cont < 1 || n_text - n_cont < 8) fail("length {} is too short for the continuation task", length);
  size_t start = 0;
  const Book& book = pick_book(rng, n_text, &start);
  s.book = book.id;
  const Haystack hay = haystack(book, start, n_text);
  s.document = pre;
  s.document.insert(s.document.end(), hay.ids.begin(), hay.ids.end() - n_cont);
  s.query.assign(hay.ids.end() - n_cont, hay.ids.end());
  return s;
}

Sample SampleBuilder::fidelity(int64_t length, int index) const {
  Rng rng(sample_seed(opt_.seed, "fidelity", 0, index));
  Sample s;
  s.task = "fidelity";
  s.length = length;
  s.index = index;
  s.n_generate = opt_.fidelity_tokens;
  s.ignore_eos = true;
  s.question = opt_.chat ? "Summarize the text above in one sentence." : "In one sentence, the text above is about";
  const std::vector<int32_t> pre = prefix();
  s.query = query_tokens("\n\n" + s.question);
  const int64_t h = length - static_cast<int64_t>(pre.size() + s.query.size());
  if (h < 16) fail("length {} is too short for the fidelity task", length);
  size_t start = 0;
  const Book& book = pick_book(rng, h, &start);
  s.book = book.id;
  const Haystack hay = haystack(book, start, h);
  s.document = pre;
  s.document.insert(s.document.end(), hay.ids.begin(), hay.ids.end());
  return s;
}

// ---- running ------------------------------------------------------------------------------

namespace {

bool wants_query_logits(const Sample& s) { return s.task == "continuation" || s.task == "fidelity"; }

}  // namespace

RunOutput run_sample(EngineSlot& slot, const Sample& s, const HaltingConfig* hc, DeltaSignal trace_signal) {
  if (s.document.empty() || s.query.empty()) fail("sample without document or query");
  InferenceEngine& engine = slot.get(s.n_tokens() + s.n_generate);
  const Tokenizer& tok = slot.model().tokenizer();
  Session session(engine, tok);
  RunOutput out;
  PrefillRequest req;
  req.halting = hc;
  req.trace = &out.trace;
  req.trace_signal = trace_signal;
  req.separate_query = true;
  // The continuation's "query" is the text it predicts: no policy may read it.
  req.query_visible = s.task != "continuation";
  req.logits_last = wants_query_logits(s) ? static_cast<int64_t>(s.query.size()) : 1;
  PrefillResult pr = session.prefill(Prompt{s.document, s.query}, req);
  out.document_ms = pr.document_ms;
  out.query_ms = pr.query_ms;
  out.document_last = std::move(pr.document_last);
  out.flops_full = out.trace.flops_full;
  out.flops_done = out.trace.flops_done;
  out.active_after = out.trace.active_per_layer.empty() ? 0 : out.trace.active_per_layer.back();
  out.query_logits = std::move(pr.logits);
  GenerateOptions go;
  go.max_tokens = s.n_generate;
  go.ignore_eos = s.ignore_eos;
  const Generation g = session.generate(std::span<const float>(out.query_logits).last(static_cast<size_t>(tok.n_vocab())),
                                        s.query.back(), go);
  out.generated = g.ids;
  out.text = tok.decode(out.generated);
  return out;
}

std::vector<double> needles_kept(const Sample& s, const HaltingTrace& tr) {
  std::vector<double> out;
  if (tr.halted_after.empty()) return out;
  for (size_t i = 0; i < s.needle_offsets.size() && i < s.needle_lengths.size(); ++i) {
    int64_t kept = 0, n = 0;
    for (int64_t t = s.needle_offsets[i]; t < s.needle_offsets[i] + s.needle_lengths[i] && t < tr.n_tokens; ++t, ++n) {
      if (tr.halted_after[static_cast<size_t>(t)] >= tr.n_layer) ++kept;
    }
    out.push_back(n > 0 ? static_cast<double>(kept) / static_cast<double>(n) : 1.0);
  }
  return out;
}

std::string generate_text(EngineSlot& slot, const std::vector<int32_t>& prompt, int n) {
  InferenceEngine& engine = slot.get(static_cast<int64_t>(prompt.size()) + n);
  const Tokenizer& tok = slot.model().tokenizer();
  Session session(engine, tok);
  const PrefillResult pr = session.prefill(Prompt{prompt, {}}, PrefillRequest{});
  GenerateOptions go;
  go.max_tokens = n;
  const Generation g = session.generate(pr.last(tok.n_vocab()), prompt.back(), go);
  return tok.decode(g.ids);
}

std::vector<bool> answers_found(const Sample& s, std::string_view text) {
  std::vector<bool> found;
  for (const std::string& a : s.answers)
    found.push_back(s.wrong_answers.empty() ? answer_found(text, a) : answer_found_first(text, a, s.wrong_answers));
  return found;
}

nlohmann::json score_run(const Sample& s, const RunOutput& out, const RunOutput& ref, int64_t n_vocab) {
  // Scores of logits that are not numbers would be numbers (argmax, clamped divergences).
  for (const RunOutput* r : {&out, &ref}) {
    for (const std::vector<float>* l : {&r->query_logits, &r->document_last}) {
      if (!all_finite(*l)) {
        fail("{} sample {} at {} tokens: the {} run's logits are not finite (NaN or Inf)", s.task, s.index, s.length,
             r == &out ? "scored" : "reference");
      }
    }
  }
  nlohmann::json j;
  const auto v = static_cast<size_t>(n_vocab);
  auto last_row = [&](const RunOutput& r) { return std::span<const float>(r.query_logits).subspan(r.query_logits.size() - v, v); };
  j["top1_last"] = argmax(last_row(out)) == argmax(last_row(ref)) ? 1.0 : 0.0;
  j["kl_last"] = kl_divergence(last_row(ref), last_row(out));
  if (is_retrieval_task(s.task)) {
    const std::vector<bool> found = answers_found(s, out.text);
    j["found"] = found;
    j["score"] = found.empty() ? 0.0 : static_cast<double>(std::count(found.begin(), found.end(), true)) / static_cast<double>(found.size());
  } else if (s.task == "continuation") {
    // Token 0 of the continuation is predicted at the last document position, token i at query
    // position i - 1.
    std::vector<float> rows(out.document_last);
    rows.insert(rows.end(), out.query_logits.begin(), out.query_logits.end() - static_cast<std::ptrdiff_t>(v));
    j["nll"] = mean_nll(rows, n_vocab, s.query);
  } else if (s.task == "fidelity") {
    const size_t n = out.query_logits.size() / v;
    double top1 = 0, kl = 0;
    for (size_t i = 0; i < n; ++i) {
      const auto a = std::span<const float>(ref.query_logits).subspan(i * v, v);
      const auto b = std::span<const float>(out.query_logits).subspan(i * v, v);
      top1 += argmax(a) == argmax(b) ? 1.0 : 0.0;
      kl += kl_divergence(a, b);
    }
    j["top1"] = top1 / static_cast<double>(n);
    j["kl"] = kl / static_cast<double>(n);
    j["greedy_match"] = common_prefix(out.generated, ref.generated);
  }
  // A metric that is not a number is an error, never a silent NaN in the table (or a null in the
  // JSON, which a resumed run could not read back).
  for (const auto& [metric, v] : j.items()) {
    if (v.is_number_float() && !std::isfinite(v.get<double>())) {
      fail("{} sample {} at {} tokens: metric {} is {}, not a finite number", s.task, s.index, s.length, metric, v.get<double>());
    }
  }
  return j;
}

const char* primary_metric(const std::string& task) {
  if (is_retrieval_task(task)) return "score";
  if (task == "continuation") return "nll";
  return "top1";
}

bool higher_is_better(const std::string& metric) { return metric != "nll" && metric != "kl" && metric != "kl_last"; }

}  // namespace dashlm::eval
