#include "frontends/cli/halting_output.h"

#include <cmath>
#include <fstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"
#include "runtime/dash/calibration.h"

namespace dashlm::cli {

void add_halting_flags(CLI::App* c, HaltingFlags& f) {
  const HaltingConfig d;
  const std::string policies = "Halting policy: none, " + halting_policy_names() + ", auto (the setting saved by dashlm calibrate)";
  const std::pair<Setting, std::string> flags[] = {
      {Setting::Policy, policies},
      {Setting::HaltLayer, "topk/random/attn/query: decision layer, an index or a fraction of depth"},
      {Setting::Keep, "topk/random/attn/query: fraction of document tokens kept active"},
      {Setting::MinLayer, "threshold: first layer whose delta counts; topk/random/attn/query with --decide stable: first layer ranked"},
      {Setting::Tau, "threshold: halt when the delta stays below this"},
      {Setting::Patience, "threshold: for this many consecutive layers"},
      {Setting::AttnQueries, "attn (and query without a query): last tokens whose attention ranks the document"},
      {Setting::Pool, "query: a token scores the most attention within this many neighbours"},
      {Setting::Words, "query: keep or halt whole words (tokens with no word boundary between them, such as a number's digits) "
                       "of up to this many tokens; 0: single tokens"},
      {Setting::Sentences, "query: keep or halt whole sentences of up to this many tokens (instead of words); 0: off"},
      {Setting::Blocks, "query: rank in consecutive blocks of this many document tokens, each keeping the same fraction; 0: "
                        "one ranking of the whole document"},
      {Setting::Mix, "query: weight of the delta's rank beside the attention's (0..1)"},
      {Setting::Then, "topk/random/attn/query: later decisions L@KEEP[/L@KEEP...], layers ascending, keep fractions (of the "
                      "tokens eligible at the start) falling"},
      {Setting::Decide, "topk/random/attn/query: where the first decision falls: fixed (--halt-layer) or stable (the first layer "
                        "from --min-layer on whose top set overlaps the previous layer's by --overlap; --halt-layer at the latest)"},
      {Setting::Overlap, "--decide stable: the fraction of the top set that must stay (0..1]"},
      {Setting::Kv, "Keys/values of halted tokens: retain or drop"},
      {Setting::Signal, "Halting signal: abs (||U||), rel (||U||/||h||), block (1-cos)"},
      {Setting::ProtectFirst, "First tokens that never halt (attention sinks)"},
      {Setting::ProtectLast, "Last document tokens that never halt (>= 1)"},
  };
  for (const auto& [s, help] : flags) {
    std::string& v = f.value[s];
    const bool unset = (s == Setting::Tau && d.tau < 0) || (s == Setting::Patience && d.patience == 0);
    v = unset ? "" : setting_value(d, s);
    CLI::Option* o = c->add_option(setting_flag(s), v, help);
    if (!unset) o->default_str(v);
    f.option[s] = o;
  }
}

HaltingConfig resolve_halting(const HaltingFlags& f, int n_layer, uint64_t seed, const std::string& model_path, bool calibrated_default) {
  std::vector<std::pair<Setting, std::string>> given;
  for (const auto& [s, o] : f.option)
    if (o->count()) given.emplace_back(s, f.value.at(s));
  const bool by_default = given.empty() && calibrated_default && calibration_is_default(model_path, n_layer);
  if (by_default) given.emplace_back(Setting::Policy, "auto");
  try {
    std::string chosen;
    HaltingConfig hc = resolve_halting_settings(given, n_layer, seed, model_path, &chosen);
    if (!chosen.empty()) fmt::print(stderr, "halting auto{}: {}\n", by_default ? " (the default; --halting none: full prefill)" : "", chosen);
    return hc;
  } catch (const SettingError& e) {
    fail_with_flag(e);
  }
}

void fail_with_flag(const SettingError& e) { fail("{} {}", setting_flag(e.setting), e.problem); }

nlohmann::json halting_json(const HaltingConfig& hc, int n_layer, const HaltingTrace& tr, const std::vector<double>& layer_ms) {
  nlohmann::json j = hc.to_json(n_layer);
  j["n_document_tokens"] = tr.n_tokens;
  j["active_per_layer"] = tr.active_per_layer;
  j["flops_full"] = tr.flops_full;
  j["flops_done"] = tr.flops_done;
  j["flop_speedup"] = tr.flop_speedup();
  j["decision_layers"] = tr.decision_layers;
  j["layer_ms"] = layer_ms;
  return j;
}

void check_deltas_path(const std::string& path) { check_output_path(path, "--dump-deltas", {".npy", ".csv"}); }


namespace {

void write_deltas_to(const std::string& path, bool csv, const HaltingTrace& tr) {
  if (csv) {
    std::ofstream out(path);
    if (!out) fail("cannot write {}", path);
    out << "token";
    for (int l = 0; l < tr.n_layer; ++l) out << ",L" << l;
    out << "\n";
    for (int64_t t = 0; t < tr.n_tokens; ++t) {
      out << t;
      for (int l = 0; l < tr.n_layer; ++l) {
        const float v = tr.delta[static_cast<size_t>(t * tr.n_layer + l)];
        out << ',';
        if (std::isfinite(v)) out << fmt::format("{:.6g}", v);
      }
      out << "\n";
    }
    if (!out) fail("cannot write {}", path);
    return;
  }
  // NPY v1.0: magic, header length, a Python dict literal padded to a multiple of 64 bytes.
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", tr.n_tokens, tr.n_layer);
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) fail("cannot write {}", path);
  const auto hlen = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(static_cast<char>(hlen & 0xff));
  out.put(static_cast<char>(hlen >> 8));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(tr.delta.data()), static_cast<std::streamsize>(tr.delta.size() * sizeof(float)));
  if (!out) fail("cannot write {}", path);
}

}  // namespace

void write_deltas(const std::string& path, const HaltingTrace& tr) {
  check_deltas_path(path);
  write_file_atomically(path, [&](const std::string& tmp) { write_deltas_to(tmp, path.ends_with(".csv"), tr); });
}

}  // namespace dashlm::cli
