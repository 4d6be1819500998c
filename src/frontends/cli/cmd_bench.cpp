// dashlm bench: prompt-processing and generation speed in the style of llama-bench, with DASH
// rows measured side by side with full prefill (alternating repetitions), and generation after
// each prompt length (tgN @ P: N greedy tokens decoded after a P-token prompt, on the cache the
// timed full prefill left).
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backends/cpu/ops.h"
#include "common/error.h"
#include "common/files.h"
#include "frontends/cli/commands.h"
#include "frontends/cli/common.h"
#include "frontends/cli/halting_output.h"
#include "common/lists.h"
#include "common/stats.h"
#include "common/timing.h"
#include "runtime/engine_factory.h"
#include "runtime/session.h"

namespace dashlm::cli {

namespace {

struct BenchOptions {
  std::string model, tokenizer, prompts = "512", text_file, output = "md", backend = "cpu", kv_type;
  int n_gen = 0;
  int reps = 3;
  int threads = 0;
  uint64_t seed = 0;
  HaltingFlags halting;
};

struct Row {
  Row(std::string t, int64_t n, int64_t depth = 0) : test(std::move(t)), n_tokens(n), n_depth(depth) {}
  std::string test;
  int64_t n_tokens = 0;
  int64_t n_depth = 0;     // tg rows: the prompt tokens in the cache before the first decoded token
  std::vector<double> ms;  // per repetition
  double flop_speedup = 1.0;
  double speedup = 0;      // DASH rows: median full time / median DASH time
  double peak_rss_mib = 0;
  double mean_tps() const {
    double s = 0;
    for (double m : ms) s += static_cast<double>(n_tokens) * 1000.0 / m;
    return s / static_cast<double>(ms.size());
  }
  double std_tps() const {
    const double mu = mean_tps();
    double s = 0;
    for (double m : ms) s += std::pow(static_cast<double>(n_tokens) * 1000.0 / m - mu, 2);
    return ms.size() > 1 ? std::sqrt(s / static_cast<double>(ms.size() - 1)) : 0.0;
  }
};


// Peak resident memory of each prompt length on its own, in one process: before a length, the
// heap's free memory goes back to the system (malloc_trim) and the kernel's high-water mark is
// reset to the current resident set (writing 5 to /proc/self/clear_refs, Linux 4.0+); after it,
// VmHWM of /proc/self/status is the peak while that length ran, model pages and all. Where the
// reset is not possible, getrusage's ru_maxrss (the process's peak so far) is reported instead,
// which is per length only for lengths given in ascending order.
class PeakRss {
 public:
  void start() {
    malloc_trim(0);
    std::ofstream f("/proc/self/clear_refs");
    f << "5";
    f.flush();
    reset_ok_ = static_cast<bool>(f);
  }
  double mib() const {
    if (reset_ok_) {
      std::ifstream f("/proc/self/status");
      std::string line;
      while (std::getline(f, line)) {
        if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;  // kB
      }
    }
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_maxrss) / 1024.0;
  }

 private:
  bool reset_ok_ = false;
};


// n prompt tokens: the text's tokens repeated, or seeded random ordinary tokens.
std::vector<int32_t> bench_tokens(const Model& model, const std::vector<int32_t>& text_ids, int64_t n, uint64_t seed) {
  const Tokenizer& tok = model.tokenizer();
  std::vector<int32_t> ids;
  ids.reserve(static_cast<size_t>(n));
  if (tok.bos() >= 0 && tok.add_bos_default()) ids.push_back(tok.bos());
  if (!text_ids.empty()) {
    while (static_cast<int64_t>(ids.size()) < n) ids.push_back(text_ids[ids.size() % text_ids.size()]);
  } else {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int32_t> pick(0, tok.n_vocab() - 1);
    while (static_cast<int64_t>(ids.size()) < n) {
      const int32_t id = pick(rng);
      if (tok.token_type(id) == TokenType::NORMAL) ids.push_back(id);
    }
  }
  return ids;
}

int bench(const BenchOptions& o) {
  if (o.reps < 1) fail("-r must be >= 1");
  if (o.n_gen < 0) fail("-n must be >= 0");
  if (o.output != "md" && o.output != "json" && o.output != "csv") fail("-o must be md, json or csv");
  const std::vector<int64_t> lengths = parse_lengths(o.prompts, "-p");
  const int threads = resolve_threads(o.threads);
  const CacheType kv_type = resolve_cache_type(o.kv_type, o.backend);
  cpu::set_num_threads(threads);
  auto model = Model::load(o.model, o.tokenizer);
  const HParams& hp = model->hp();
  const HaltingConfig hc = resolve_halting(o.halting, hp.n_layer, o.seed, o.model);
  for (int64_t n : lengths) {
    if (n > hp.n_ctx_train) fail("-p {} is longer than the model's context of {} tokens", n, hp.n_ctx_train);
  }
  // Before any prompt is made: the longest must fit in memory.
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  if (longest + o.n_gen > hp.n_ctx_train) {
    fail("-p {} with -n {} is longer than the model's context of {} tokens", longest, o.n_gen, hp.n_ctx_train);
  }
  check_engine_fits(*model, longest + o.n_gen, o.backend, kv_type);
  std::vector<int32_t> text_ids;
  if (!o.text_file.empty()) {
    text_ids = model->tokenizer().encode(read_file(o.text_file), false, false);
    if (text_ids.empty()) fail("{} has no tokens", o.text_file);
  }
  const bool tty = stderr_is_tty();
  std::string kernels;  // the first engine's description
  // The prompt's prefill, timed; with n_gen > 0 (and tg_ms given), then n_gen greedy tokens
  // decoded after it, timed on their own.
  auto timed_prefill = [&](const std::vector<int32_t>& ids, const HaltingConfig* h, HaltingTrace* tr, int n_gen = 0,
                           double* tg_ms = nullptr) {
    auto e = make_engine(*model, static_cast<int64_t>(ids.size()) + n_gen, o.backend, kv_type);
    if (kernels.empty()) kernels = e->kernels();
    PrefillRequest req;
    req.halting = h;
    req.trace = tr;
    Session session(*e, model->tokenizer());
    const PrefillResult pr = session.prefill(Prompt{ids, {}}, req);
    if (n_gen > 0 && tg_ms) {
      const std::vector<float>& first = pr.logits;
      int32_t id = static_cast<int32_t>(std::max_element(first.begin(), first.end()) - first.begin());
      const auto t0 = Clock::now();
      for (int i = 0; i < n_gen; ++i) {
        const std::vector<float> l = e->decode(id);
        id = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
      }
      *tg_ms = ms_since(t0);
    }
    return pr.document_ms;
  };
  {  // Warm-up: first-touch of the weights, thread start-up.
    auto ids = bench_tokens(*model, text_ids, std::min<int64_t>(64, lengths.front()), o.seed);
    timed_prefill(ids, nullptr, nullptr);
  }

  std::vector<Row> rows, tg_rows;
  for (int64_t n : lengths) {
    const auto ids = bench_tokens(*model, text_ids, n, o.seed);
    Row full(fmt::format("pp{}", n), n);
    Row dash(fmt::format("pp{}+dash({})", n, hc.describe(hp.n_layer)), n);
    Row tg(fmt::format("tg{} @ {}", o.n_gen, n), o.n_gen, n);
    PeakRss rss;
    rss.start();
    for (int r = 0; r < o.reps; ++r) {
      if (tty) fmt::print(stderr, "\rpp{} rep {}/{}   ", n, r + 1, o.reps);
      double tg_ms = 0;
      full.ms.push_back(timed_prefill(ids, nullptr, nullptr, o.n_gen, &tg_ms));
      if (o.n_gen > 0) tg.ms.push_back(tg_ms);
      if (hc.enabled()) {
        HaltingTrace tr;
        dash.ms.push_back(timed_prefill(ids, &hc, &tr));
        dash.flop_speedup = tr.flop_speedup();
      }
    }
    full.peak_rss_mib = rss.mib();  // full and DASH repetitions alternate: the peak of both
    rows.push_back(full);
    if (hc.enabled()) {
      dash.speedup = median(full.ms) / median(dash.ms);
      dash.peak_rss_mib = full.peak_rss_mib;
      rows.push_back(dash);
    }
    if (o.n_gen > 0) {
      tg.peak_rss_mib = full.peak_rss_mib;
      tg_rows.push_back(tg);
    }
  }
  rows.insert(rows.end(), tg_rows.begin(), tg_rows.end());
  if (tty) fmt::print(stderr, "\r{:<40}\r", "");

  const double size_mib = [&] {
    double b = 0;
    for (const TensorInfo& t : model->file().tensors) b += static_cast<double>(t.nbytes);
    return b / (1024.0 * 1024.0);
  }();
  // The CPU cache's type; other backends keep their own.
  const std::string kv_type_label = cache_type_name(kv_type);
  if (o.output == "json") {
    nlohmann::json arr = nlohmann::json::array();
    for (const Row& r : rows) {
      nlohmann::json j{{"model", model->name()}, {"arch", hp.arch_str}, {"backend", o.backend}, {"size_mib", size_mib}, {"threads", threads},
                       {"kv_type", kv_type_label}, {"test", r.test}, {"n_tokens", r.n_tokens}, {"n_depth", r.n_depth},
                       {"reps", r.ms.size()}, {"ms", r.ms}, {"median_ms", median(r.ms)},
                       {"avg_ts", r.mean_tps()}, {"stddev_ts", r.std_tps()}, {"peak_rss_mib", r.peak_rss_mib},
                       {"kernels", kernels}};
      if (r.test.find("dash") != std::string::npos) {
        j["speedup"] = r.speedup;
        j["flop_speedup"] = r.flop_speedup;
      }
      arr.push_back(j);
    }
    fmt::print("{}\n", arr.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
  } else if (o.output == "csv") {
    fmt::print("model,arch,size_mib,threads,test,n_tokens,avg_ts,stddev_ts,speedup,flop_speedup,peak_rss_mib,n_depth,kv_type,median_ms\n");
    for (const Row& r : rows) {
      fmt::print("\"{}\",{},{:.2f},{},\"{}\",{},{:.3f},{:.3f},{:.4f},{:.4f},{:.1f},{},{},{:.3f}\n", model->name(), hp.arch_str, size_mib,
                 threads, r.test, r.n_tokens, r.mean_tps(), r.std_tps(), r.speedup, r.flop_speedup, r.peak_rss_mib, r.n_depth,
                 kv_type_label, median(r.ms));
    }
  } else {
    fmt::print("| model | size | threads | test | t/s | speedup | FLOP speedup | peak RSS |\n");
    fmt::print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n");
    for (const Row& r : rows) {
      const bool d = r.test.find("dash") != std::string::npos;
      fmt::print("| {} | {:.1f} MiB | {} | {} | {:.2f} ± {:.2f} | {} | {} | {:.0f} MiB |\n", model->name(), size_mib, threads, r.test,
                 r.mean_tps(), r.std_tps(), d ? fmt::format("{:.2f}x", r.speedup) : "", d ? fmt::format("{:.2f}x", r.flop_speedup) : "",
                 r.peak_rss_mib);
    }
    if (!kernels.empty()) fmt::print("\nkernels: {}\n", kernels);
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* c = app.add_subcommand("bench", "Measure prompt processing (ppN) and generation (tgN) speed");
  c->add_option("-m,--model", o->model, "Model file")->required();
  c->add_option("--tokenizer", o->tokenizer, "Tokenizer file (for llama2.c checkpoints)");
  c->add_option("-p,--prompt-lengths", o->prompts, "Prompt lengths, comma-separated (k = 1024)")->capture_default_str();
  c->add_option("-n,--n-gen", o->n_gen, "Generated tokens for a tgN @ P row after each prompt length P (0: none)")->capture_default_str();
  c->add_option("-r,--reps", o->reps, "Repetitions of each test")->capture_default_str();
  c->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  c->add_option("-f,--file", o->text_file, "Take prompt tokens from this text (repeated); default: seeded random tokens");
  c->add_option("--seed", o->seed, "Seed for random tokens and the random policy")->check(seed_range())->capture_default_str();
  c->add_option("-o,--output", o->output, "Output format: md, json or csv")->capture_default_str();
  c->add_option("--backend", o->backend, "Compute backend: cpu or cuda")->capture_default_str();
  add_kv_type_option(c, o->kv_type);
  add_halting_flags(c, o->halting);
  c->callback([o, &action] { action = [o] { return bench(*o); }; });
}

}  // namespace dashlm::cli
