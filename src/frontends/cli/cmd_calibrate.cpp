// dashlm calibrate: the paper's screening step. On held-out text (a book eval never uses), search
// the halting setting with the largest FLOP-model speedup whose continuation NLL stays within a
// budget of full prefill's, and save it beside the model (MODEL.dash.json) for
// `dashlm run --halting auto`.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
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
#include "frontends/cli/commands.h"
#include "frontends/cli/common.h"
#include "frontends/cli/eval_cli.h"
#include "frontends/cli/halting_output.h"
#include "common/lists.h"
#include "eval/eval.h"
#include "runtime/dash/calibration.h"

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
  std::string model, tokenizer, policy = "topk", text_file, dataset_dir, output, kv = "retain", delta = "abs", backend = "cpu", kv_type;
  std::string length = "2k";
  double budget = -1;
  int samples = 2, cont_tokens = 256, threads = 0;
  uint64_t seed = 0;
  bool quiet = false;
};

struct Candidate {
  HaltingConfig hc;
  std::string spec;
  double flop_speedup = NAN, nll = NAN, delta_nll = NAN;
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

int calibrate(const CalibrateOptions& o) {
  using Clock = std::chrono::steady_clock;
  if (!(o.budget >= 0)) fail("--budget must be >= 0 (nats per token of continuation NLL above full prefill)");
  const PolicyInfo* policy = find_halting_policy(o.policy);
  if (!policy || !policy->calibration_grid) fail("--policy must be one of: {}", calibrated_policy_names());
  if (o.samples < 1) fail("--samples must be >= 1");
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
  EngineSlot slot(*model, o.backend, resolve_kv_type(o.kv_type, o.backend));
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
  for (const HaltingConfig& hc : policy->calibration_grid(base, L, quantile)) grid.push_back(Candidate{hc, "", NAN, NAN, NAN});
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

  // The choice: the largest FLOP speedup within the budget; the smaller NLL change on ties.
  const Candidate* best = nullptr;
  for (const Candidate& c : grid) {
    if (!(c.delta_nll <= o.budget)) continue;
    if (!best || c.flop_speedup > best->flop_speedup + 1e-9 ||
        (std::fabs(c.flop_speedup - best->flop_speedup) <= 1e-9 && c.delta_nll < best->delta_nll)) {
      best = &c;
    }
  }
  fmt::print("# dashlm calibrate: {} ({} layers), held-out text {}, {} sample(s) of {} tokens ({} continuation tokens), budget {} nats/token\n",
             model->name(), L, text_ids, samples.size(), length, samples.front().query.size(), o.budget);
  fmt::print("# full prefill: continuation NLL {:.4f}\n\n", nll_full);
  fmt::print("| config | describe | FLOP speedup | NLL | NLL change | within budget |\n| --- | --- | ---: | ---: | ---: | --- |\n");
  for (const Candidate& c : grid) {
    fmt::print("| {} | {} | {:.2f}x | {:.4f} | {:+.4f} | {}{} |\n", c.spec, c.hc.describe(L), c.flop_speedup, c.nll, c.delta_nll,
               c.delta_nll <= o.budget ? "yes" : "no", &c == best ? " <- chosen" : "");
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
  if (best) {
    j["spec"] = best->spec;
    j["describe"] = best->hc.describe(L);
    j["flop_speedup"] = best->flop_speedup;
    j["nll"] = best->nll;
    j["delta_nll"] = best->delta_nll;
    fmt::print("\nchosen: {} ({}): FLOP speedup {:.2f}x, NLL change {:+.4f} within {}\n", best->spec, best->hc.describe(L), best->flop_speedup,
               best->delta_nll, o.budget);
  } else {
    j["spec"] = "none";
    j["describe"] = "none";
    j["flop_speedup"] = 1.0;
    j["nll"] = nll_full;
    j["delta_nll"] = 0.0;
    fmt::print("\nno setting stays within the budget of {}: --halting auto will run full prefill\n", o.budget);
  }
  for (const Candidate& c : grid) j["search"].push_back({{"spec", c.spec}, {"flop_speedup", c.flop_speedup}, {"nll", c.nll}, {"delta_nll", c.delta_nll}});
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
      "Searches decision layer x keep (topk) or min layer x tau x patience (threshold; tau from quantiles of the\n"
      "model's deltas) for the largest FLOP-model speedup whose continuation NLL on held-out text (by default the\n"
      "datasets' held-out book, Newton's Opticks) stays within --budget nats per token of full prefill's, and saves\n"
      "it as MODEL.dash.json, which `dashlm run --halting auto` (and bench) then use.");
  c->add_option("-m,--model", o->model, "Model file")->required();
  c->add_option("--tokenizer", o->tokenizer, "Tokenizer file (for llama2.c checkpoints)");
  c->add_option("--budget", o->budget, "Allowed continuation-NLL increase over full prefill, nats per token")->required();
  c->add_option("--policy", o->policy, "Policy to calibrate: " + calibrated_policy_names())->capture_default_str();
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
