// dashlm calibrate: the paper's screening step. On held-out text (a book eval never uses), search
// the halting setting with the largest FLOP-model speedup whose continuation NLL stays within a
// budget of full prefill's and, when asked, whose retrieval score (needles or variable chains
// planted in that text, the question given as the query) drops by no more than a second budget,
// and save it beside the model (MODEL.dash.json) for `dashlm run --halting auto`.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
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
#include "frontends/cli/commands.h"
#include "frontends/cli/common.h"
#include "frontends/cli/eval_cli.h"
#include "frontends/cli/halting_output.h"
#include "common/lists.h"
#include "eval/eval.h"
#include "eval/stats.h"
#include "runtime/dash/calibration.h"
#include "runtime/engine_factory.h"

namespace dashlm::cli {

namespace {

// The policies that offer a calibration grid: "topk, threshold".
std::string calibrated_policy_names() {
  std::string s;
  for (const PolicyInfo* p : halting_policies())
    if (p->calibration_grid) s += (s.empty() ? "" : ", ") + std::string(p->name);
  return s;
}

struct CalibrateOptions {
  std::string model, tokenizer, policy = "topk,query", text_file, dataset_dir, output, kv = "retain", delta = "abs", backend = "cpu", kv_type;
  std::string length = "2k", retrieval_task = "needle", retrieval_length, chat = "auto";
  double budget = -1, max_retrieval_drop = -1;
  int samples = 2, cont_tokens = 256, threads = 0, retrieval_samples = 10, n_gen = 32;
  uint64_t seed = 0;
  bool quiet = false;
};

struct Candidate {
  HaltingConfig hc;
  std::string spec;
  double flop_speedup = NAN, nll = NAN, delta_nll = NAN;
  // On the retrieval samples (NaN: not measured, because a faster setting met both budgets first
  // or this one is outside the NLL budget).
  double retrieval_score = NAN, retrieval_drop = NAN;
  eval::stats::Paired retrieval_change;
};

// Quantiles of the deltas of the layers from min_layer on (NaN where a token did not run).
std::vector<double> delta_quantiles(const std::vector<eval::RunOutput>& refs, int min_layer, const std::vector<double>& qs) {
  std::vector<float> v;
  for (const eval::RunOutput& r : refs) {
    const HaltingTrace& t = r.trace;
    for (int64_t tok = 0; tok < t.n_tokens; ++tok)
      for (int l = min_layer; l < t.n_layer; ++l) {
        const float d = t.delta[static_cast<size_t>(tok * t.n_layer + l)];
        if (std::isfinite(d)) v.push_back(d);
      }
  }
  if (v.empty()) fail("no deltas recorded");
  std::sort(v.begin(), v.end());
  std::vector<double> out;
  for (double q : qs) out.push_back(v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))]);
  return out;
}

// "7 of 10, 95% interval 0.40 to 0.89" (Wilson), or the mean's t interval for scores that are
// not 0/1.
std::string retrieval_interval(const std::vector<double>& found) {
  const eval::stats::MeanCI m = eval::stats::mean_ci(found);
  if (std::string_view(m.method) == "wilson") {
    return fmt::format("{} of {}, 95% interval {:.2f} to {:.2f}", std::count(found.begin(), found.end(), 1.0), m.n, m.ci.lo, m.ci.hi);
  }
  return fmt::format("n {}, 95% interval {:.2f} to {:.2f}", m.n, m.ci.lo, m.ci.hi);
}

int calibrate(const CalibrateOptions& o) {
  using Clock = std::chrono::steady_clock;
  if (!(o.budget >= 0)) fail("--budget must be >= 0 (nats per token of continuation NLL above full prefill)");
  std::vector<const PolicyInfo*> policies;
  for (const std::string& name : split_list(o.policy)) {
    const PolicyInfo* p = find_halting_policy(name);
    if (!p || !p->calibration_grid) fail("--policy must be one or more of: {} (got '{}')", calibrated_policy_names(), name);
    if (std::find(policies.begin(), policies.end(), p) == policies.end()) policies.push_back(p);
  }
  if (policies.empty()) fail("--policy: give at least one policy ({})", calibrated_policy_names());
  if (o.samples < 1) fail("--samples must be >= 1");
  const bool retrieval = o.max_retrieval_drop >= 0;
  if (retrieval) {
    if (!eval::is_retrieval_task(o.retrieval_task)) fail("--retrieval-task must be a retrieval task, got '{}'", o.retrieval_task);
    if (o.retrieval_samples < 1) fail("--retrieval-samples must be >= 1");
  }
  const int threads = resolve_threads(o.threads);
  // The output file is checked before any work, so that a typo does not cost a calibration.
  const std::string out_path = o.output.empty() ? calibration_path(o.model) : o.output;
  check_output_path(out_path, o.output.empty() ? "calibrate (the file beside the model)" : "-o");
  cpu::set_num_threads(threads);
  auto model = Model::load(o.model, o.tokenizer);
  const HParams& hp = model->hp();
  const int L = hp.n_layer;
  if (L < 2) fail("the model has {} layer(s): nothing to halt", L);
  const std::vector<int64_t> lens = parse_lengths(o.length);
  if (lens.size() != 1) fail("--length takes one length");
  const int64_t length = std::min<int64_t>(lens[0], hp.n_ctx_train);

  eval::Dataset ds;
  if (!o.text_file.empty()) {
    ds = eval::dataset_from_text(o.text_file, read_file(o.text_file));
  } else {
    ds = eval::load_dataset(find_dataset_dir(o.dataset_dir));
    if (ds.with_role("heldout").empty()) fail("the datasets in {} have no held-out book: give --text FILE", ds.dir);
  }
  std::string text_ids;
  for (const eval::Book* b : ds.with_role("heldout")) text_ids += (text_ids.empty() ? "" : ",") + b->id;
  eval::SampleOptions so;
  so.role = "heldout";
  so.n_samples = o.samples;
  so.continuation_tokens = o.cont_tokens;
  so.seed = o.seed;
  const eval::SampleBuilder builder(model->tokenizer(), ds, so);
  std::vector<eval::Sample> samples;
  for (int i = 0; i < o.samples; ++i) samples.push_back(builder.build("continuation", length, i));

  // Full prefill: the reference NLL and the deltas of the chosen signal at every layer (whose
  // quantiles give a grid its thresholds).
  HaltingConfig base;
  try {
    base.signal = parse_delta_signal(o.delta);
    base.kv = parse_kv_mode(o.kv);
  } catch (const SettingError& e) {
    fail_with_flag(e);
  }
  const bool tty = !o.quiet && stderr_is_tty();
  const auto t0 = Clock::now();
  EngineSlot slot(*model, o.backend, resolve_cache_type(o.kv_type, o.backend));
  std::vector<eval::RunOutput> refs;
  double nll_full = 0;
  for (const eval::Sample& s : samples) {
    if (tty) fmt::print(stderr, "\r\033[Kfull prefill, sample {}/{}", refs.size() + 1, samples.size());
    refs.push_back(eval::run_sample(slot, s, nullptr, base.signal));
    nll_full += eval::score_run(s, refs.back(), refs.back(), hp.n_vocab)["nll"].get<double>();
  }
  nll_full /= static_cast<double>(samples.size());

  // The grid: the policy's own.
  std::vector<Candidate> grid;
  const auto quantile = [&](int from_layer, double q) { return delta_quantiles(refs, from_layer, {q})[0]; };
  for (const PolicyInfo* policy : policies)
    for (const HaltingConfig& hc : policy->calibration_grid(base, L, quantile)) {
      Candidate c;
      c.hc = hc;
      grid.push_back(std::move(c));
    }
  for (size_t gi = 0; gi < grid.size(); ++gi) {
    Candidate& c = grid[gi];
    c.hc.validate(L);
    c.spec = c.hc.spec();
    double nll = 0, ff = 0, fd = 0;
    for (size_t i = 0; i < samples.size(); ++i) {
      if (tty) {
        const double el = std::chrono::duration<double>(Clock::now() - t0).count();
        fmt::print(stderr, "\r\033[K[{}/{}] {} sample {}/{} ({:.0f}s)", gi + 1, grid.size(), c.spec, i + 1, samples.size(), el);
      }
      const eval::RunOutput out = eval::run_sample(slot, samples[i], &c.hc);
      nll += eval::score_run(samples[i], out, refs[i], hp.n_vocab)["nll"].get<double>();
      ff += out.flops_full;
      fd += out.flops_done;
    }
    c.nll = nll / static_cast<double>(samples.size());
    c.delta_nll = c.nll - nll_full;
    c.flop_speedup = fd > 0 ? ff / fd : 1.0;
  }
  if (tty) fmt::print(stderr, "\r\033[K");

  // The order of preference: the largest FLOP speedup, the smaller NLL change on ties.
  std::vector<Candidate*> order;
  for (Candidate& c : grid) {
    if (c.delta_nll <= o.budget) order.push_back(&c);
  }
  std::stable_sort(order.begin(), order.end(), [](const Candidate* a, const Candidate* b) {
    if (std::fabs(a->flop_speedup - b->flop_speedup) > 1e-9) return a->flop_speedup > b->flop_speedup;
    return a->delta_nll < b->delta_nll;
  });
  const Candidate* best = nullptr;
  double retrieval_full = NAN;
  std::vector<double> full_found;
  int64_t retrieval_len = 0;
  if (!retrieval) {
    best = order.empty() ? nullptr : order.front();
  } else {
    // Retrieval samples from the same held-out text, posed as eval poses them (the model's chat
    // turn), the question given as the query. Full prefill once; then the settings within the NLL
    // budget, fastest first, until one also keeps the retrieval score within its budget.
    eval::SampleOptions ro = chat_sample_options(*model, o.chat);
    ro.role = "heldout";
    ro.n_samples = o.retrieval_samples;
    ro.n_generate = o.n_gen;
    ro.seed = o.seed;
    const std::vector<int64_t> rl = parse_lengths(o.retrieval_length.empty() ? o.length : o.retrieval_length);
    if (rl.size() != 1) fail("--retrieval-length takes one length");
    retrieval_len = std::min<int64_t>(rl[0], hp.n_ctx_train - o.n_gen);
    const eval::SampleBuilder rbuilder(model->tokenizer(), ds, ro);
    std::vector<eval::Sample> rsamples;
    for (int i = 0; i < o.retrieval_samples; ++i) rsamples.push_back(rbuilder.build(o.retrieval_task, retrieval_len, i));
    auto score = [&](const eval::Sample& s, const HaltingConfig* hc) {
      const eval::RunOutput out = eval::run_sample(slot, s, hc);
      const std::vector<bool> f = eval::answers_found(s, out.text);
      return static_cast<double>(std::count(f.begin(), f.end(), true)) / static_cast<double>(f.size());
    };
    for (size_t i = 0; i < rsamples.size(); ++i) {
      if (tty) fmt::print(stderr, "\r\033[K{}: full prefill, sample {}/{}", o.retrieval_task, i + 1, rsamples.size());
      full_found.push_back(score(rsamples[i], nullptr));
    }
    retrieval_full = std::accumulate(full_found.begin(), full_found.end(), 0.0) / static_cast<double>(full_found.size());
    for (size_t k = 0; k < order.size() && !best; ++k) {
      Candidate& c = *order[k];
      std::vector<double> found;
      for (size_t i = 0; i < rsamples.size(); ++i) {
        if (tty) {
          const double el = std::chrono::duration<double>(Clock::now() - t0).count();
          fmt::print(stderr, "\r\033[K{}: [{}/{}] {} sample {}/{} ({:.0f}s)", o.retrieval_task, k + 1, order.size(), c.spec, i + 1,
                     rsamples.size(), el);
        }
        found.push_back(score(rsamples[i], &c.hc));
      }
      c.retrieval_score = std::accumulate(found.begin(), found.end(), 0.0) / static_cast<double>(found.size());
      c.retrieval_drop = retrieval_full - c.retrieval_score;
      c.retrieval_change = eval::stats::paired_newcombe(found, full_found);
      if (c.retrieval_drop <= o.max_retrieval_drop + 1e-12) best = &c;
    }
    if (tty) fmt::print(stderr, "\r\033[K");
  }
  fmt::print("# dashlm calibrate: {} ({} layers), held-out text {}, {} sample(s) of {} tokens ({} continuation tokens), budget {} nats/token\n",
             model->name(), L, text_ids, samples.size(), length, samples.front().query.size(), o.budget);
  fmt::print("# full prefill: continuation NLL {:.4f}\n", nll_full);
  if (retrieval) {
    fmt::print("# retrieval: {} on {} sample(s) of {} tokens, full prefill {:.2f} ({}); budget: a drop of at most {}\n", o.retrieval_task,
               full_found.size(), retrieval_len, retrieval_full, retrieval_interval(full_found), o.max_retrieval_drop);
    fmt::print("# (measured on the settings within the NLL budget, fastest first, until one meets both budgets)\n");
  }
  fmt::print("\n| config | describe | FLOP speedup | NLL | NLL change | {}within budget |\n| --- | --- | ---: | ---: | ---: | {}--- |\n",
             retrieval ? "retrieval score | retrieval change (95% interval) | " : "", retrieval ? "---: | --- | " : "");
  for (const Candidate& c : grid) {
    std::string r;
    if (retrieval) {
      r = std::isnan(c.retrieval_score) ? " | |"
                                        : fmt::format(" {:.2f} | {:+.2f} ({:+.2f} to {:+.2f}) |", c.retrieval_score, -c.retrieval_drop,
                                                      c.retrieval_change.ci.lo, c.retrieval_change.ci.hi);
    }
    const bool within = c.delta_nll <= o.budget && (!retrieval || c.retrieval_drop <= o.max_retrieval_drop + 1e-12);
    const std::string verdict = retrieval && c.delta_nll <= o.budget && std::isnan(c.retrieval_score) ? "not measured" : within ? "yes" : "no";
    fmt::print("| {} | {} | {:.2f}x | {:.4f} | {:+.4f} |{} {}{} |\n", c.spec, c.hc.describe(L), c.flop_speedup, c.nll, c.delta_nll, r, verdict,
               &c == best ? " <- chosen" : "");
  }
  nlohmann::json j;
  j["model"] = model->name();
  j["model_file"] = std::filesystem::path(o.model).filename().string();
  j["budget"] = o.budget;
  j["policy"] = o.policy;
  j["text"] = text_ids;
  j["length"] = length;
  j["samples"] = samples.size();
  j["cont_tokens"] = samples.front().query.size();
  j["nll_full"] = nll_full;
  if (retrieval) {
    j["max_retrieval_drop"] = o.max_retrieval_drop;
    j["retrieval"] = {{"task", o.retrieval_task}, {"samples", full_found.size()}, {"length", retrieval_len}, {"score_full", retrieval_full}};
  }
  if (best) {
    j["spec"] = best->spec;
    j["describe"] = best->hc.describe(L);
    j["flop_speedup"] = best->flop_speedup;
    j["nll"] = best->nll;
    j["delta_nll"] = best->delta_nll;
    if (retrieval) {
      j["retrieval_score"] = best->retrieval_score;
      j["retrieval_drop"] = best->retrieval_drop;
    }
    fmt::print("\nchosen: {} ({}): FLOP speedup {:.2f}x, NLL change {:+.4f} within {}{}\n", best->spec, best->hc.describe(L), best->flop_speedup,
               best->delta_nll, o.budget,
               retrieval ? fmt::format(", {} score {:.2f} against {:.2f} (drop {:+.2f} within {})", o.retrieval_task, best->retrieval_score,
                                       retrieval_full, best->retrieval_drop, o.max_retrieval_drop)
                         : "");
  } else {
    j["spec"] = "none";
    j["describe"] = "none";
    j["flop_speedup"] = 1.0;
    j["nll"] = nll_full;
    j["delta_nll"] = 0.0;
    if (retrieval) {
      j["retrieval_score"] = retrieval_full;
      j["retrieval_drop"] = 0.0;
    }
    fmt::print("\nno setting stays within the budget{}: --halting auto will run full prefill\n",
               retrieval ? fmt::format("s (NLL {}, {} drop {})", o.budget, o.retrieval_task, o.max_retrieval_drop) : fmt::format(" of {}", o.budget));
  }
  for (const Candidate& c : grid) {
    nlohmann::json e = {{"spec", c.spec}, {"flop_speedup", c.flop_speedup}, {"nll", c.nll}, {"delta_nll", c.delta_nll}};
    if (retrieval && !std::isnan(c.retrieval_score)) {
      e["retrieval_score"] = c.retrieval_score;
      e["retrieval_drop"] = c.retrieval_drop;
      e["retrieval_change_ci"] = nlohmann::json::array({c.retrieval_change.ci.lo, c.retrieval_change.ci.hi});
    }
    j["search"].push_back(e);
  }
  // Names from the model file need not be UTF-8; JSON output must be.
  write_file_atomically(out_path, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  fmt::print("saved {}\n", out_path);
  return 0;
}

}  // namespace

void add_calibrate_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<CalibrateOptions>();
  CLI::App* c = app.add_subcommand("calibrate", "Choose a halting setting on held-out text within an NLL budget (for --halting auto)");
  c->footer(
      "Searches decision layer x keep and staged schedules (topk, query), or min layer x tau x patience (threshold;\n"
      "tau from quantiles of the model's deltas) for the largest FLOP-model speedup whose continuation NLL on\n"
      "held-out text (by default the datasets' held-out book, Newton's Opticks) stays within --budget nats per token\n"
      "of full prefill's and, with --max-retrieval-drop, whose score on a retrieval task planted in the same text\n"
      "(the question given as the query) falls by at most that much below full prefill's on the same samples. The\n"
      "continuation is not a question: there the query policy ranks by the document's last tokens. Saves the choice\n"
      "as MODEL.dash.json, which `dashlm run --halting auto` (and bench) then use.\n"
      "Example: dashlm calibrate -m MODEL --budget 0.05 --max-retrieval-drop 0.02 --retrieval-task needle --kv drop");
  c->add_option("-m,--model", o->model, "Model file")->required();
  c->add_option("--tokenizer", o->tokenizer, "Tokenizer file (for llama2.c checkpoints)");
  c->add_option("--budget", o->budget, "Allowed continuation-NLL increase over full prefill, nats per token")->required();
  c->add_option("--policy", o->policy, "Policies to calibrate, comma-separated: " + calibrated_policy_names())->capture_default_str();
  c->add_option("--max-retrieval-drop", o->max_retrieval_drop,
                "Allowed fall of the retrieval score below full prefill's (a fraction of answers; off when not given)")
      ->check(CLI::NonNegativeNumber);
  c->add_option("--retrieval-task", o->retrieval_task, "Retrieval task of that budget (needle, passkey, variable-tracking, ...)")
      ->capture_default_str();
  c->add_option("--retrieval-samples", o->retrieval_samples, "Retrieval samples")->capture_default_str();
  c->add_option("--retrieval-length", o->retrieval_length, "Tokens per retrieval sample (default: --length)");
  c->add_option("--chat", o->chat, "Retrieval prompts in the model's chat turn: auto, on or off")->capture_default_str();
  c->add_option("--n-gen", o->n_gen, "Greedy tokens generated for retrieval answers")->capture_default_str();
  c->add_option("--text", o->text_file, "Held-out text file (default: the datasets' held-out book)");
  c->add_option("--dataset-dir", o->dataset_dir, "Datasets from scripts/build-datasets (default: .cache/datasets)");
  c->add_option("--length", o->length, "Tokens per sample, document plus continuation (k = 1024)")->capture_default_str();
  c->add_option("--samples", o->samples, "Samples of the held-out text")->capture_default_str();
  c->add_option("--cont-tokens", o->cont_tokens, "Continuation tokens scored per sample (at most half the length)")->capture_default_str();
  c->add_option("--kv", o->kv, "Keys/values of halted tokens: retain or drop")->capture_default_str();
  c->add_option("--delta", o->delta, "Halting signal: abs, rel or block")->capture_default_str();
  c->add_option("-o,--output", o->output, "Where to save the choice (default: MODEL.dash.json beside the model)");
  c->add_option("--seed", o->seed, "Seed of the samples")->check(seed_range())->capture_default_str();
  c->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  c->add_option("--backend", o->backend, "Compute backend: cpu or cuda")->capture_default_str();
  add_kv_type_option(c, o->kv_type);
  c->add_flag("-q,--quiet", o->quiet, "No progress on stderr");
  c->callback([o, &action] { action = [o] { return calibrate(*o); }; });
}

}  // namespace dashlm::cli
