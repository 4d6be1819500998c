// dashlm eval: what halting costs in answer quality. Every halting configuration and full
// prefill run on the same samples (needle, passkey, multi-needle retrieval, continuation NLL,
// fidelity to full prefill) at several prompt lengths; the table reports the measured prefill
// speedup (full prefill and each configuration alternate on every sample), the FLOP-model
// speedup, each task's score and its change against full prefill.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backends/cpu/ops.h"
#include "common/error.h"
#include "common/files.h"
#include "common/json.h"
#include "frontends/cli/commands.h"
#include "frontends/cli/common.h"
#include "frontends/cli/eval_cli.h"
#include "frontends/cli/eval_plot.h"
#include "model/chat.h"
#include "runtime/engine_factory.h"
#include "common/lists.h"
#include "eval/eval.h"
#include "eval/resume.h"
#include "eval/stats.h"

namespace dashlm::cli {

std::string find_dataset_dir(const std::string& given) {
  namespace fs = std::filesystem;
  if (!given.empty()) return given;
  if (fs::exists(".cache/datasets/manifest.json")) return ".cache/datasets";
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path beside = exe.parent_path().parent_path() / ".cache" / "datasets";
    if (fs::exists(beside / "manifest.json")) return beside.string();
  }
  return ".cache/datasets";
}

eval::SampleOptions chat_sample_options(const Model& model, const std::string& mode) {
  if (mode != "auto" && mode != "on" && mode != "off") fail("--chat must be auto, on or off, got '{}'", mode);
  eval::SampleOptions o;
  const Metadata& meta = model.file().meta;
  const ChatFormat f = model.chat_format();
  if (mode == "on" && f == ChatFormat::None) fail("--chat on: the model has no chat template that dashlm knows");
  // auto: only models that carry a template (base models of a chat family do not).
  o.chat = mode == "on" || (mode == "auto" && f != ChatFormat::None && meta.get_string("tokenizer.chat_template").has_value());
  if (o.chat) {
    const ChatMessage turn[] = {{"user", ""}};
    ChatText t = chat_format_conversation(f, turn, chat_default_system_prompt(meta));
    o.chat_before = std::move(t.history);
    o.chat_after = std::move(t.last_turn);
  }
  return o;
}

namespace {

struct EvalOptions {
  std::string model, tokenizer, tasks = "needle,passkey,multi-needle,continuation,fidelity", lengths = "1k,4k";
  std::string configs = "topk:0.4:0.33:retain,topk:0.4:0.33:drop,random:0.4:0.33:retain";
  std::string json_path, plot_path, resume_path, dataset_dir, chat = "auto", backend = "cpu", plot_x = "measured", kv_type;
  int samples = 5, n_gen = 32, cont_tokens = 256, threads = 0;
  double tolerance = 0.02;
  uint64_t seed = 0;
  bool quiet = false;
  bool report_only = false;
};

// A configuration row of the evaluation: full prefill (the reference) or a halting setting.
struct ConfigRow {
  std::string key;       // "full" or the canonical spec
  std::string describe;  // for people
  std::string policy, kv;
  HaltingConfig hc;
};

// The plot's curve a configuration belongs to: its policy, with what changes the policy's shape
// (later decisions, the delta fused in, a decision layer found per prompt).
std::string plot_series(const ConfigRow& r) {
  std::string s = r.policy;
  if (!r.hc.then.empty()) s += " staged";
  if (r.hc.mix > 0) s += " fused";
  if (r.hc.decide == DecideRule::Stable) s += " stable";
  return s;
}

std::string length_label(int64_t n) { return n % 1024 == 0 ? fmt::format("{}k", n / 1024) : fmt::format("{}", n); }

std::string record_key(const std::string& task, int64_t length, int sample, const std::string& config) {
  return fmt::format("{}|{}|{}|{}", task, length, sample, config);
}

std::string fmt_duration(double s) {
  s = std::round(s);
  if (s < 60) return fmt::format("{:.0f}s", s);
  if (s < 3600) return fmt::format("{:.0f}m{:02.0f}s", std::floor(s / 60), std::fmod(s, 60));
  return fmt::format("{:.0f}h{:02.0f}m", std::floor(s / 3600), std::fmod(s / 60, 60));
}

// Means over the records of one configuration, optionally at one length, with their intervals
// and the paired comparison against full prefill on the same samples.
struct Aggregate {
  int n_runs = 0;
  double speedup = NAN, flop_speedup = NAN;
  struct Stat {
    double mean = NAN, delta = NAN;  // mean, mean paired change against full prefill
    int n = 0;
    eval::stats::MeanCI ci;          // the mean's 95% interval
    eval::stats::Paired paired;      // the change's, over the samples full prefill also ran (n_paired)
    double full_mean = NAN;          // full prefill's mean over those samples
    eval::stats::Verdict verdict = eval::stats::Verdict::Unresolved;
  };
  std::map<std::string, std::map<std::string, Stat>> tasks;  // task -> metric -> stat
};

const std::vector<std::string>& task_metrics(const std::string& task) {
  static const std::vector<std::string> retrieval = {"score", "top1_last", "kl_last"};
  static const std::vector<std::string> cont = {"nll", "top1_last", "kl_last"};
  static const std::vector<std::string> fid = {"top1", "kl", "greedy_match", "top1_last", "kl_last"};
  if (eval::is_retrieval_task(task)) return retrieval;
  return task == "continuation" ? cont : fid;
}

// Metrics whose values are shares (0/1 per sample for most tasks): their paired changes use
// McNemar and Newcombe where every value is 0 or 1.
bool proportion_metric(const std::string& metric) { return metric == "score" || metric == "top1_last"; }

Aggregate aggregate(const std::vector<nlohmann::json>& records, const std::map<std::string, const nlohmann::json*>& by_key,
                    const std::string& config, int64_t length /* 0: all */, double tolerance) {
  Aggregate a;
  double full_ms = 0, ms = 0, f_full = 0, f_done = 0;
  struct Values {
    std::vector<double> all, paired, ref;
  };
  std::map<std::string, std::map<std::string, Values>> acc;
  for (const nlohmann::json& r : records) {
    if (r["config"] != config || (length > 0 && r["length"].get<int64_t>() != length)) continue;
    ++a.n_runs;
    full_ms += r["full_document_ms"].get<double>();
    ms += r["document_ms"].get<double>();
    f_full += r["flops_full"].get<double>();
    f_done += r["flops_done"].get<double>();
    const std::string task = r["task"];
    const auto ref_it = by_key.find(record_key(task, r["length"], r["sample"], "full"));
    for (const std::string& m : task_metrics(task)) {
      if (!r.contains(m)) continue;
      Values& v = acc[task][m];
      const double x = r[m].get<double>();
      v.all.push_back(x);
      if (ref_it != by_key.end() && ref_it->second->contains(m)) {
        v.paired.push_back(x);
        v.ref.push_back((*ref_it->second)[m].get<double>());
      }
    }
  }
  if (a.n_runs > 0) {
    a.speedup = ms > 0 ? full_ms / ms : NAN;
    a.flop_speedup = f_done > 0 ? f_full / f_done : NAN;
  }
  for (auto& [task, ms_] : acc) {
    for (auto& [m, v] : ms_) {
      Aggregate::Stat s;
      s.ci = eval::stats::mean_ci(v.all);
      s.mean = s.ci.mean;
      s.n = static_cast<int>(v.all.size());
      if (!v.paired.empty()) {
        s.paired = eval::stats::paired_compare(v.paired, v.ref, proportion_metric(m));
        s.delta = s.paired.diff;
        double sum = 0;
        for (double x : v.ref) sum += x;
        s.full_mean = sum / static_cast<double>(v.ref.size());
        s.verdict = eval::stats::judge(s.full_mean, s.paired.ci, eval::higher_is_better(m), tolerance);
      }
      a.tasks[task][m] = std::move(s);
    }
  }
  return a;
}

std::string cell(const Aggregate& a, const std::string& task, const std::string& metric, bool is_full, int decimals) {
  const auto t = a.tasks.find(task);
  if (t == a.tasks.end()) return "";
  const auto m = t->second.find(metric);
  if (m == t->second.end()) return "";
  const Aggregate::Stat& s = m->second;
  if (is_full || metric == "kl" || metric == "greedy_match") return fmt::format("{:.{}f}", s.mean, decimals);
  return fmt::format("{:.{}f} ({:+.{}f})", s.mean, decimals, s.delta, decimals);
}

// The table's columns for the tasks asked for.
struct Column {
  std::string title, task, metric;
  int decimals;
};

std::vector<Column> columns_for(const std::vector<std::string>& tasks) {
  std::vector<Column> cols;
  for (const std::string& t : tasks) {
    if (eval::is_retrieval_task(t)) cols.push_back({t, t, "score", 2});
    if (t == "continuation") cols.push_back({"continuation NLL", t, "nll", 3});
    if (t == "fidelity") {
      cols.push_back({"fidelity top-1", t, "top1", 3});
      cols.push_back({"fidelity KL", t, "kl", 4});
      cols.push_back({"greedy match /32", t, "greedy_match", 1});
    }
  }
  return cols;
}

void print_table(const std::vector<ConfigRow>& rows, const std::vector<Column>& cols, const std::vector<nlohmann::json>& records,
                 const std::map<std::string, const nlohmann::json*>& by_key, int64_t length, double tolerance) {
  std::string head = "| config | speedup | FLOP speedup |", rule = "| --- | ---: | ---: |";
  for (const Column& c : cols) {
    head += fmt::format(" {} |", c.title);
    rule += " ---: |";
  }
  fmt::print("{}\n{}\n", head, rule);
  for (const ConfigRow& row : rows) {
    const Aggregate a = aggregate(records, by_key, row.key, length, tolerance);
    if (a.n_runs == 0) continue;
    const bool full = row.key == "full";
    std::string line = fmt::format("| {} | {} | {} |", full ? "full prefill" : row.key, full ? "1.00x" : fmt::format("{:.2f}x", a.speedup),
                                   full ? "1.00x" : fmt::format("{:.2f}x", a.flop_speedup));
    for (const Column& c : cols) line += fmt::format(" {} |", cell(a, c.task, c.metric, full, c.decimals));
    fmt::print("{}\n", line);
  }
}

std::string fmt_interval(const eval::stats::Interval& ci, int decimals, bool sign) {
  if (std::isnan(ci.lo) || std::isnan(ci.hi)) return "n/a";
  return sign ? fmt::format("{:+.{}f} to {:+.{}f}", ci.lo, decimals, ci.hi, decimals)
              : fmt::format("{:.{}f} to {:.{}f}", ci.lo, decimals, ci.hi, decimals);
}

std::string fmt_p(double p) {
  if (std::isnan(p)) return "";
  return p < 0.001 ? "<0.001" : fmt::format("{:.3f}", p);
}

// Each task's primary score per configuration: sample count, mean with its 95% interval, the
// paired change against full prefill with its interval, the samples better and worse, the p of
// no change, and whether the change is within the tolerance (or the samples cannot tell).
void print_statistics(const std::vector<ConfigRow>& rows, const std::vector<std::string>& tasks, const std::vector<nlohmann::json>& records,
                      const std::map<std::string, const nlohmann::json*>& by_key, int64_t length, double tolerance) {
  fmt::print("| task | config | n | mean | 95% interval | change | 95% interval of change | better/worse | p | within {:g}%? |\n",
             tolerance * 100);
  fmt::print("| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | --- |\n");
  for (const std::string& task : tasks) {
    const std::string metric = eval::primary_metric(task);
    const int dec = metric == "nll" ? 3 : 2;
    for (const ConfigRow& row : rows) {
      const Aggregate a = aggregate(records, by_key, row.key, length, tolerance);
      const auto t = a.tasks.find(task);
      if (t == a.tasks.end() || !t->second.count(metric)) continue;
      const Aggregate::Stat& st = t->second.at(metric);
      std::string line = fmt::format("| {} | {} | {} | {:.{}f} | {} |", task, row.key == "full" ? "full prefill" : row.key, st.n, st.mean, dec,
                                     fmt_interval(st.ci.ci, dec, false));
      if (row.key == "full" || st.paired.n == 0) {
        line += " | | | | |";
      } else {
        const bool hib = eval::higher_is_better(metric);
        line += fmt::format(" {:+.{}f} | {} ({}) | {}/{} | {} | {} |", st.paired.diff, dec, fmt_interval(st.paired.ci, dec, true),
                            st.paired.method, hib ? st.paired.higher : st.paired.lower, hib ? st.paired.lower : st.paired.higher,
                            fmt_p(st.paired.p), eval::stats::verdict_name(st.verdict));
      }
      fmt::print("{}\n", line);
    }
  }
}

// Whether halting kept the planted text: per configuration and retrieval task, the samples whose
// planted text never halted, and of the answers lost against full prefill on the same sample how
// many had it whole (the model had the fact and still missed) or not (the ranking halted it).
void print_needles_kept(const std::vector<ConfigRow>& rows, const std::vector<std::string>& tasks, const std::vector<nlohmann::json>& records,
                        const std::map<std::string, const nlohmann::json*>& by_key) {
  std::string out;
  for (const ConfigRow& row : rows) {
    if (row.key == "full") continue;
    for (const std::string& t : tasks) {
      if (!eval::is_retrieval_task(t)) continue;
      int n = 0, whole = 0, lost = 0, lost_whole = 0;
      for (const nlohmann::json& r : records) {
        if (r["task"] != t || r["config"] != row.key || !r.contains("needles_kept")) continue;
        const auto kept = r["needles_kept"].get<std::vector<double>>();
        const bool all = std::all_of(kept.begin(), kept.end(), [](double v) { return v >= 1.0; });
        ++n;
        whole += all;
        const auto f = by_key.find(record_key(t, r["length"].get<int64_t>(), r["sample"].get<int>(), "full"));
        if (f != by_key.end() && r["score"].get<double>() < (*f->second)["score"].get<double>()) {
          ++lost;
          lost_whole += all;
        }
      }
      if (n == 0) continue;
      out += fmt::format("| {} | {} | {} of {} | {} | {} | {} |\n", t, row.key, whole, n, lost, lost_whole, lost - lost_whole);
    }
  }
  if (out.empty()) return;
  fmt::print("\nplanted text kept by halting (every token of it active to the last layer), and the answers lost against full "
             "prefill on the same sample:\n\n");
  fmt::print("| retrieval task | config | samples with it whole | answers lost | lost with it whole | lost with part halted |\n");
  fmt::print("| --- | --- | ---: | ---: | ---: | ---: |\n{}", out);
}

// The first setting in which a resume file's record differs from this run, for people.
std::string settings_difference(const nlohmann::json& theirs, const nlohmann::json& ours) {
  for (const auto& [k, v] : ours.items()) {
    const auto it = theirs.find(k);
    if (it == theirs.end()) return fmt::format("no {}; here {}", k, json_describe(v));
    if (*it != v) return fmt::format("{} {} there, {} here", k, json_describe(*it), json_describe(v));
  }
  for (const auto& [k, v] : theirs.items()) {
    if (!ours.contains(k)) return fmt::format("{} {} there, unknown here", k, json_describe(v));
  }
  return "?";
}

nlohmann::json interval_json(const eval::stats::Interval& ci) { return nlohmann::json::array({ci.lo, ci.hi}); }

// mean, change and n as before; ci (95%) and ci_method; for the paired change against full
// prefill: n_paired, change_ci, change_method, better, worse, p, full_mean and verdict.
nlohmann::json aggregate_json(const Aggregate& a, bool is_full) {
  nlohmann::json j{{"n_runs", a.n_runs}, {"speedup", a.speedup}, {"flop_speedup", a.flop_speedup}};
  for (const auto& [task, ms] : a.tasks) {
    for (const auto& [m, s] : ms) {
      nlohmann::json e = {{"mean", s.mean}, {"change", s.delta}, {"n", s.n}, {"ci", interval_json(s.ci.ci)}, {"ci_method", s.ci.method}};
      if (!is_full && s.paired.n > 0) {
        e["n_paired"] = s.paired.n;
        e["change_ci"] = interval_json(s.paired.ci);
        e["change_method"] = s.paired.method;
        const bool hib = eval::higher_is_better(m);  // samples better and worse than full prefill
        e["better"] = hib ? s.paired.higher : s.paired.lower;
        e["worse"] = hib ? s.paired.lower : s.paired.higher;
        e["p"] = s.paired.p;
        e["full_mean"] = s.full_mean;
        e["verdict"] = eval::stats::verdict_name(s.verdict);
      }
      j["tasks"][task][m] = std::move(e);
    }
  }
  return j;
}

int eval_main(const EvalOptions& o) {
  using Clock = std::chrono::steady_clock;
  if (o.samples < 1) fail("--samples must be >= 1");
  if (o.n_gen < 1) fail("--n-gen must be >= 1");
  if (o.cont_tokens < 1) fail("--cont-tokens must be >= 1");
  if (o.plot_x != "measured" && o.plot_x != "flops") fail("--plot-x must be measured or flops");
  // Output files are checked before any work, so that a typo does not cost an evaluation.
  if (!o.plot_path.empty()) check_eval_plot_path(o.plot_path);
  if (!o.json_path.empty()) check_output_path(o.json_path, "--json");
  if (!o.resume_path.empty() && !o.report_only) check_output_path(o.resume_path, "--resume");
  std::vector<std::string> tasks = split_list(o.tasks);
  for (const std::string& t : tasks) {
    if (std::find(eval::task_names().begin(), eval::task_names().end(), t) == eval::task_names().end()) {
      fail("unknown task '{}' ({})", t, eval::task_names_text());
    }
  }
  if (tasks.empty()) fail("--tasks: give at least one task");
  const std::vector<int64_t> lengths = parse_lengths(o.lengths);
  const int threads = resolve_threads(o.threads);
  const CacheType kv_type = resolve_cache_type(o.kv_type, o.backend);
  cpu::set_num_threads(threads);

  auto model = Model::load(o.model, o.tokenizer);
  const HParams& hp = model->hp();
  for (int64_t n : lengths) {
    if (n > hp.n_ctx_train) fail("length {} is longer than the model's context of {} tokens", n, hp.n_ctx_train);
  }
  // Configurations: full prefill first (the reference), then the ones asked for.
  std::vector<ConfigRow> rows{{"full", "full prefill", "full", "", HaltingConfig{}}};
  for (const std::string& spec : split_list(o.configs)) {
    HaltingConfig hc = HaltingConfig::parse(spec);
    hc.validate(hp.n_layer);
    const std::string key = hc.spec();
    if (std::any_of(rows.begin(), rows.end(), [&](const ConfigRow& r) { return r.key == key; })) fail("--configs lists {} twice", key);
    rows.push_back({key, hc.describe(hp.n_layer), hc.policy, hc.enabled() ? kv_mode_name(hc.kv) : "", hc});
  }

  const std::string ds_dir = find_dataset_dir(o.dataset_dir);
  const eval::Dataset ds = eval::load_dataset(ds_dir);
  eval::SampleOptions so = chat_sample_options(*model, o.chat);
  so.n_samples = o.samples;
  so.n_generate = o.n_gen;
  so.continuation_tokens = o.cont_tokens;
  so.seed = o.seed;
  so.role = "eval";
  const eval::SampleBuilder builder(model->tokenizer(), ds, so);

  // Results must not be mixed across settings that change the samples or the numbers.
  std::string books;
  for (const eval::Book& b : ds.books) books += b.id + ",";
  const nlohmann::json raw_settings = {{"model", model->name()}, {"n_layers", hp.n_layer}, {"backend", o.backend},
                                       {"kv_type", cache_type_name(kv_type)}, {"chat", so.chat},
                                       {"seed", o.seed}, {"samples", o.samples}, {"n_gen", o.n_gen}, {"cont_tokens", o.cont_tokens},
                                       {"dataset_books", books}, {"dataset_facts", ds.facts.size()}};
  // As the resume file will hold them (text that is not UTF-8, e.g. a model name, is replaced),
  // so that they compare equal when read back.
  const nlohmann::json settings =
      nlohmann::json::parse(raw_settings.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));

  std::vector<nlohmann::json> records;
  std::set<std::string> done;
  if (o.report_only && (o.resume_path.empty() || !std::filesystem::exists(o.resume_path))) {
    fail("--report-only needs the --resume file of an earlier run");
  }
  if (!o.resume_path.empty() && std::filesystem::exists(o.resume_path)) {
    eval::ResumeFile rf = eval::read_resume_file(o.resume_path);
    for (eval::ResumeLine& rl : rf.records) {
      nlohmann::json& r = rl.record;
      if (r["settings"] != settings) {
        fail("--resume {}: its results were made with other settings (line {}: {}); use another file", o.resume_path,
             rl.line, settings_difference(r["settings"], settings));
      }
      const std::string key = record_key(r["task"], r["length"], r["sample"], r["config"]);
      if (done.insert(key).second) records.push_back(std::move(r));
    }
    // Even with --quiet: skipped lines are results that will be run again.
    if (!rf.bad.empty()) fmt::print(stderr, "{}\n", rf.warning(o.resume_path));
    if (!o.quiet) fmt::print(stderr, "resume: {} results already in {}\n", records.size(), o.resume_path);
  }
  std::unique_ptr<eval::ResumeWriter> resume_out;
  if (!o.resume_path.empty() && !o.report_only) resume_out = std::make_unique<eval::ResumeWriter>(o.resume_path);

  // Work still to do, for progress and the time estimate.
  // Work is counted in prompt tokens, so that the estimate holds when the lengths differ.
  int64_t total = 0, finished = 0;
  double work_total = 0, work_done = 0;
  // --report-only runs nothing, not even what the resume file lacks.
  const std::vector<int64_t> run_lengths = o.report_only ? std::vector<int64_t>{} : lengths;
  for (int64_t len : run_lengths)
    for (const std::string& t : tasks)
      for (int i = 0; i < o.samples; ++i)
        for (const ConfigRow& r : rows) {
          if (done.count(record_key(t, len, i, r.key))) continue;
          ++total;
          work_total += static_cast<double>(len);
        }
  const bool tty = !o.quiet && stderr_is_tty();
  const auto t_start = Clock::now();
  // One engine for every run, its cache sized for the longest prompt plus its generated tokens.
  EngineSlot slot(*model, o.backend, kv_type);
  if (total > 0) {  // warm-up: first touch of the weights, thread start-up
    const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
    const int64_t room = std::max<int64_t>({so.n_generate, so.fidelity_tokens, 64});
    InferenceEngine& e = slot.get(std::min<int64_t>(longest + room, hp.n_ctx_train));
    std::vector<int32_t> ids(32, model->tokenizer().bos() >= 0 ? model->tokenizer().bos() : 0);
    e.prefill(ids, PrefillOptions{}, nullptr);
  }
  auto progress = [&](const std::string& what) {
    if (!tty) return;
    const double el = std::chrono::duration<double>(Clock::now() - t_start).count();
    const std::string eta = work_done > 0 ? ", ~" + fmt_duration(el / work_done * (work_total - work_done)) + " left" : "";
    fmt::print(stderr, "\r\033[K[{}/{} runs, {}{}] {}", finished, total, fmt_duration(el), eta, what);
    std::fflush(stderr);
  };
  auto save = [&](nlohmann::json r) {
    r["settings"] = settings;
    if (resume_out) resume_out->append(r);
    done.insert(record_key(r["task"], r["length"], r["sample"], r["config"]));
    const auto len = r["length"].get<int64_t>();
    records.push_back(std::move(r));
    ++finished;
    work_done += static_cast<double>(len);
  };

  for (int64_t len : run_lengths) {
    for (const std::string& task : tasks) {
      // Room for the generated tokens: at the model's full context the prompt is that much shorter.
      const int gen = eval::is_retrieval_task(task) ? so.n_generate : task == "fidelity" ? so.fidelity_tokens : 0;
      const int64_t prompt_len = std::min<int64_t>(len, hp.n_ctx_train - gen);
      if (prompt_len < len && !o.quiet) fmt::print(stderr, "{}: prompts of {} tokens at length {} (room for {} generated tokens)\n", task, prompt_len, len, gen);
      for (int i = 0; i < o.samples; ++i) {
        std::vector<const ConfigRow*> todo;
        for (const ConfigRow& r : rows) {
          if (!done.count(record_key(task, len, i, r.key))) todo.push_back(&r);
        }
        if (todo.empty()) continue;
        const eval::Sample s = builder.build(task, prompt_len, i);
        // Full prefill first: the reference for fidelity and the time each configuration is
        // compared with (alternating on every sample, so drifts in machine speed cancel).
        progress(fmt::format("{} {} sample {}/{}: full prefill", task, len, i + 1, o.samples));
        const eval::RunOutput ref = eval::run_sample(slot, s, nullptr);
        auto base_record = [&](const ConfigRow& row, const eval::RunOutput& out) {
          nlohmann::json r = eval::score_run(s, out, ref, hp.n_vocab);
          r["task"] = task;
          r["length"] = len;
          r["sample"] = i;
          r["config"] = row.key;
          r["describe"] = row.describe;
          r["policy"] = row.policy;
          r["kv"] = row.kv;
          r["n_tokens"] = s.n_tokens();
          r["n_document"] = s.document.size();
          r["n_query"] = s.query.size();
          r["book"] = s.book;
          r["document_ms"] = out.document_ms;
          r["query_ms"] = out.query_ms;
          r["full_document_ms"] = ref.document_ms;
          r["flops_full"] = out.flops_full;
          r["flops_done"] = out.flops_done;
          r["flop_speedup"] = out.flops_done > 0 ? out.flops_full / out.flops_done : 1.0;
          r["active_after"] = out.active_after;
          if (!out.trace.decision_layers.empty()) r["decision_layers"] = out.trace.decision_layers;
          if (eval::is_retrieval_task(task)) {
            if (row.key != "full") r["needles_kept"] = eval::needles_kept(s, out.trace);
            r["answers"] = s.answers;
            if (!s.wrong_answers.empty()) r["wrong_answers"] = s.wrong_answers;
            r["depths"] = s.depths;
            r["question"] = s.question;
          }
          if (s.n_generate > 0) r["generated"] = out.text;
          return r;
        };
        if (!done.count(record_key(task, len, i, "full"))) {
          nlohmann::json r = base_record(rows[0], ref);
          if (eval::is_retrieval_task(task)) {
            // Control: the question without the document. Answers the model gives from what it
            // already knows are not evidence of reading the document.
            const std::string cb = eval::generate_text(slot, s.closed_book, s.n_generate);
            const std::vector<bool> cb_found = eval::answers_found(s, cb);
            const auto found = std::count(cb_found.begin(), cb_found.end(), true);
            r["closed_book_generated"] = cb;
            r["closed_book_score"] = static_cast<double>(found) / static_cast<double>(s.answers.size());
          }
          save(std::move(r));
        }
        for (const ConfigRow* row : todo) {
          if (row->key == "full") continue;
          progress(fmt::format("{} {} sample {}/{}: {}", task, len, i + 1, o.samples, row->key));
          const eval::RunOutput out = eval::run_sample(slot, s, &row->hc);
          save(base_record(*row, out));
        }
        if (!tty && !o.quiet) {
          fmt::print(stderr, "eval: {} length {} sample {}/{} done ({}/{} runs, {})\n", task, len, i + 1, o.samples, finished, total,
                     fmt_duration(std::chrono::duration<double>(Clock::now() - t_start).count()));
        }
      }
    }
  }
  if (tty) fmt::print(stderr, "\r\033[K");

  // Only what this invocation asked for (a resume file may hold more).
  std::vector<nlohmann::json> sel;
  for (const nlohmann::json& r : records) {
    const bool t_ok = std::find(tasks.begin(), tasks.end(), r["task"].get<std::string>()) != tasks.end();
    const bool l_ok = std::find(lengths.begin(), lengths.end(), r["length"].get<int64_t>()) != lengths.end();
    const bool c_ok = std::any_of(rows.begin(), rows.end(), [&](const ConfigRow& c) { return c.key == r["config"].get<std::string>(); });
    if (t_ok && l_ok && c_ok && r["sample"].get<int>() < o.samples) sel.push_back(r);
  }
  std::map<std::string, const nlohmann::json*> by_key;
  auto index = [&] {
    by_key.clear();
    for (const nlohmann::json& r : sel) by_key[record_key(r["task"], r["length"], r["sample"], r["config"])] = &r;
  };
  index();
  if (o.report_only) {
    // Partial results: keep the samples that every configuration finished, so that each row
    // averages the same samples.
    std::vector<nlohmann::json> complete;
    std::map<std::pair<std::string, int64_t>, int> n_complete;  // (task, length) -> samples
    for (const nlohmann::json& r : sel) {
      const bool all = std::all_of(rows.begin(), rows.end(),
                                   [&](const ConfigRow& c) { return by_key.count(record_key(r["task"], r["length"], r["sample"], c.key)) > 0; });
      if (!all) continue;
      complete.push_back(r);
      if (r["config"] == "full") ++n_complete[{r["task"].get<std::string>(), r["length"].get<int64_t>()}];
    }
    sel = std::move(complete);
    index();
    std::string counts;
    for (int64_t len : lengths)
      for (const std::string& t : tasks) counts += fmt::format("{}{} {}: {}", counts.empty() ? "" : ", ", t, len, n_complete[{t, len}]);
    fmt::print("# report only: samples finished by every configuration: {}\n", counts);
  }

  // The table.
  const std::vector<Column> cols = columns_for(tasks);
  fmt::print("# dashlm eval: {} ({} layers), backend {}, threads {}, chat {}, {} samples per task and length, seed {}\n", model->name(), hp.n_layer,
             o.backend, threads, so.chat ? "on" : "off", o.samples, o.seed);
  fmt::print("# speedup: measured time of the document prefill, full / config (alternating on each sample); FLOP speedup: the cost model\n");
  fmt::print("# scores: mean (change against full prefill on the same samples); continuation NLL and KL: lower is better\n");
  fmt::print("# statistics: n samples; 95% intervals of the mean (Wilson for 0/1 scores, else Student's t) and of the paired change\n"
             "# against full prefill (newcombe: Newcombe's score interval for paired 0/1 scores, p from McNemar's exact test;\n"
             "# bootstrap: paired percentile bootstrap, p from the sign test; t: paired t); within/outside: the change's whole\n"
             "# interval within/beyond a loss of {:g}% of full prefill's mean (--tolerance); unresolved: the samples cannot tell\n",
             o.tolerance * 100);
  auto section = [&](int64_t len) {
    print_table(rows, cols, sel, by_key, len, o.tolerance);
    fmt::print("\n");
    print_statistics(rows, tasks, sel, by_key, len, o.tolerance);
  };
  for (int64_t len : lengths) {
    fmt::print("\n## length {}\n\n", len);
    section(len);
  }
  if (lengths.size() > 1) {
    fmt::print("\n## all lengths\n\n");
    section(0);
  }
  // Closed-book control.
  std::string control;
  nlohmann::json closed = nlohmann::json::object(), closed_stats = nlohmann::json::object();
  for (const std::string& t : tasks) {
    if (!eval::is_retrieval_task(t)) continue;
    std::vector<double> v;
    for (const nlohmann::json& r : sel) {
      if (r["task"] == t && r["config"] == "full" && r.contains("closed_book_score")) v.push_back(r["closed_book_score"].get<double>());
    }
    if (!v.empty()) {
      const eval::stats::MeanCI m = eval::stats::mean_ci(v);
      closed[t] = m.mean;
      closed_stats[t] = {{"mean", m.mean}, {"n", m.n}, {"ci", interval_json(m.ci)}, {"ci_method", m.method}};
      control += fmt::format("{}{} {:.2f} (n {}, {})", control.empty() ? "" : ", ", t, m.mean, m.n, fmt_interval(m.ci, 2, false));
    }
  }
  if (!control.empty()) {
    fmt::print("\nclosed-book control (the question without the document, full prefill): {}\n", control);
    fmt::print("(answers the model knows without reading; retrieval scores above this level measure reading)\n");
  }
  print_needles_kept(rows, tasks, sel, by_key);

  if (!o.json_path.empty()) {
    nlohmann::json j;
    j["model"] = model->name();
    j["model_path"] = o.model;
    j["settings"] = settings;
    j["threads"] = threads;
    j["tasks"] = tasks;
    j["lengths"] = lengths;
    for (const ConfigRow& r : rows) j["configs"].push_back({{"config", r.key}, {"describe", r.describe}, {"policy", r.policy}, {"kv", r.kv}});
    for (const ConfigRow& r : rows) {
      for (int64_t len : lengths) {
        nlohmann::json a = aggregate_json(aggregate(sel, by_key, r.key, len, o.tolerance), r.key == "full");
        a["config"] = r.key;
        a["length"] = len;
        j["summary"].push_back(a);
      }
      nlohmann::json a = aggregate_json(aggregate(sel, by_key, r.key, 0, o.tolerance), r.key == "full");
      a["config"] = r.key;
      a["length"] = "all";
      j["summary"].push_back(a);
    }
    j["closed_book"] = closed;
    j["closed_book_stats"] = closed_stats;
    j["tolerance"] = o.tolerance;
    j["records"] = sel;
    write_file_atomically(o.json_path, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }

  if (!o.plot_path.empty()) {
    std::vector<PlotPanel> panels;
    for (const std::string& t : tasks) {
      const std::string metric = eval::primary_metric(t);
      PlotPanel p;
      p.title = t == "continuation" ? "continuation: NLL change" : t == "fidelity" ? "fidelity: top-1 change" : t + ": score change";
      p.points.push_back({1.0, 0.0, NAN, NAN, "full", "", 0, ""});
      for (const ConfigRow& r : rows) {
        if (r.key == "full") continue;
        for (size_t li = 0; li < lengths.size(); ++li) {
          const Aggregate a = aggregate(sel, by_key, r.key, lengths[li], o.tolerance);
          const auto it = a.tasks.find(t);
          if (it == a.tasks.end() || !it->second.count(metric)) continue;
          const double x = o.plot_x == "flops" ? a.flop_speedup : a.speedup;
          const Aggregate::Stat& st = it->second.at(metric);
          p.points.push_back({x, st.delta, st.paired.ci.lo, st.paired.ci.hi, plot_series(r), r.kv, static_cast<int>(li), length_label(lengths[li])});
        }
      }
      panels.push_back(std::move(p));
    }
    write_eval_plot(o.plot_path, panels, o.plot_x == "flops" ? "FLOP speedup" : "measured speedup",
                    fmt::format("{}: quality change vs speedup", model->name()));
  }
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* c = app.add_subcommand("eval", "Measure what halting costs in answer quality, against full prefill");
  c->footer(
      "Tasks: needle (a fact from the quiz tables planted at depths 0..100% of book text, question with an exact answer),\n"
      "passkey (a 5-7 digit number in long text), multi-needle (four facts, a question needing two of them),\n"
      "variable-tracking (two interleaved chains of four assignments VAR A = 12345. VAR B = VAR A. ...; the value of\n"
      "one chain's last variable), aggregation (four words carved on a door 4, 2, 1 and 1 times; the most frequent;\n"
      "these two count an answer only when no planted wrong answer comes before it),\n"
      "continuation (mean NLL of the next --cont-tokens tokens of a book, teacher-forced after the prefilled document),\n"
      "fidelity (top-1 agreement and KL of the next-token distributions at the query positions, and greedy tokens\n"
      "matching full prefill over the first 32).\n"
      "Configs (comma-separated): none | topk:L:KEEP:KV | random:L:KEEP:KV | attn:L:KEEP:KV | query:L:KEEP:KV |\n"
      "threshold:MIN:TAU:PATIENCE:SIGNAL:KV, with L a layer index or a fraction of depth, KEEP the fraction of\n"
      "document tokens kept, KV retain|drop, SIGNAL abs|rel|block; optional :pf=N (protect first N, default 4), :pl=N,\n"
      ":delta=abs|rel|block, :q=N (attn, query), :seed=N (random), :pool=N, :words=N, :sentences=N,\n"
      ":blocks=N and :mix=W (query). The ranking policies\n"
      "(topk, random, attn, query) take later decisions with :then=L@KEEP[/L@KEEP...] (layers ascending, keep\n"
      "fractions of the tokens eligible at the start falling: query:0.25:0.5:drop:then=0.5@0.2), and decide where\n"
      "the top set stops changing with :decide=stable[:min=L][:overlap=J] (from layer min on, at L at the latest).\n"
      "Full prefill always runs as the reference; 'none'\n"
      "runs it again as a row (timing noise; its score change must be 0).\n"
      "Example: dashlm eval -m MODEL --lengths 1k,4k --configs topk:0.4:0.33:retain,threshold:2:0.5:2:rel:retain --json r.json --plot r.png");
  c->add_option("-m,--model", o->model, "Model file")->required();
  c->add_option("--tokenizer", o->tokenizer, "Tokenizer file (for llama2.c checkpoints)");
  c->add_option("--tasks", o->tasks, "Tasks, comma-separated")->capture_default_str();
  c->add_option("--lengths", o->lengths, "Prompt lengths in the model's tokens, comma-separated (k = 1024)")->capture_default_str();
  c->add_option("--configs", o->configs, "Halting configurations, comma-separated (see below)")->capture_default_str();
  c->add_option("--samples", o->samples, "Samples per task and length")->capture_default_str();
  c->add_option("--json", o->json_path, "Write the summary and every result as JSON");
  c->add_option("--plot", o->plot_path, "Draw quality change against speedup (.png or .svg)");
  c->add_option("--plot-x", o->plot_x, "Speedup on the plot's x axis: measured or flops")->capture_default_str();
  c->add_option("--resume", o->resume_path, "JSON-lines file of finished results: appended as they finish, skipped on rerun");
  c->add_option("--dataset-dir", o->dataset_dir, "Datasets from scripts/build-datasets (default: .cache/datasets)");
  c->add_option("--chat", o->chat, "Wrap prompts in the model's chat turn: auto, on or off")->capture_default_str();
  c->add_option("--n-gen", o->n_gen, "Greedy tokens generated for retrieval answers")->capture_default_str();
  c->add_option("--cont-tokens", o->cont_tokens, "Continuation: teacher-forced tokens (at most half the length)")->capture_default_str();
  c->add_option("--seed", o->seed, "Seed of the samples")->check(seed_range())->capture_default_str();
  c->add_option("--tolerance", o->tolerance,
                "Loss tolerated against full prefill, as a fraction of its mean, for the within/outside/unresolved verdicts")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  c->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  c->add_option("--backend", o->backend, "Compute backend: cpu or cuda")->capture_default_str();
  add_kv_type_option(c, o->kv_type);
  c->add_flag("-q,--quiet", o->quiet, "No progress on stderr");
  c->add_flag("--report-only", o->report_only,
              "Run nothing: report the --resume file's results, over the samples every configuration finished");
  c->callback([o, &action] { action = [o] { return eval_main(*o); }; });
}

}  // namespace dashlm::cli
