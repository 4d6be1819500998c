// dashlm run: prefill a prompt (a long document plus an optional question), then generate.
#include <cctype>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <limits>
#include <string>
#include <string_view>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backends/cpu/ops.h"
#include "common/error.h"
#include "common/files.h"
#include "frontends/cli/commands.h"
#include "frontends/cli/common.h"
#include "frontends/cli/halting_output.h"
#include "model/chat.h"
#include "common/timing.h"
#include "runtime/engine_factory.h"
#include "runtime/session.h"

namespace dashlm::cli {

namespace {

struct RunOptions {
  std::string model, tokenizer, prompt, prompt_file, prompt_ids, query, json_path, logits_path;
  int n_predict = 128;
  int64_t logits_last = 0;  // --save-logits: only the last N prompt positions (0: all)
  float temperature = 0.f;
  int top_k = 40;
  float top_p = 0.95f;
  uint64_t seed = 0;
  int threads = 0;
  int64_t ctx = 0;
  bool chat = false;
  bool ignore_eos = false;
  bool quiet = false;
  HaltingFlags halting;
  std::string halting_map, dump_deltas, backend = "cpu", kv_type;
  size_t given_sources = 0;  // how many of -p, -f, --prompt-ids were given (an empty -p counts)
};

// The prompt as two token segments: the document (which a halting policy may thin out later)
// and the query (always processed in full). With --chat both sit inside one user turn.
Prompt tokenize_prompt(const Model& model, const std::string& text, const std::string& query, bool chat) {
  const Tokenizer& tok = model.tokenizer();
  std::string before, after;
  bool special = false;
  if (chat) {
    const ChatFormat f = model.chat_format();
    if (f == ChatFormat::None) fail("--chat: the model has no chat template that dashlm knows");
    // The text before and after the user's message.
    const ChatMessage turn[] = {{"user", ""}};
    ChatText t = chat_format_conversation(f, turn, chat_default_system_prompt(model.file().meta));
    before = std::move(t.history);
    after = std::move(t.last_turn);
    special = true;
  }
  Prompt p;
  std::string q;
  if (!query.empty()) {
    const bool sep = !text.empty() && !std::isspace(static_cast<unsigned char>(text.back()));
    q = (sep ? "\n" : "") + query;
  }
  p.document = tok.encode(before + text, tok.add_bos_default(), special);
  if (!q.empty() || !after.empty()) p.query = tok.encode(q + after, false, special);
  return p;
}

// "1,15043,3186" -> ids; each must be in the vocabulary.
std::vector<int32_t> parse_ids(const std::string& s, int32_t n_vocab) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(", ", i);
    if (j == std::string::npos) j = s.size();
    if (j > i) {
      const std::string item = s.substr(i, j - i);
      char* end = nullptr;
      const long v = std::strtol(item.c_str(), &end, 10);
      if (*end != '\0' || v < 0 || v >= n_vocab) fail("--prompt-ids: '{}' is not a token id of this model (0..{})", item, n_vocab - 1);
      ids.push_back(static_cast<int32_t>(v));
    }
    i = j + 1;
  }
  return ids;
}

int run(const RunOptions& o) {
  if (o.given_sources != 1) fail("give the prompt with exactly one of -p TEXT, -f FILE or --prompt-ids LIST");
  if (o.n_predict < 0) fail("-n must be >= 0");
  if (o.ctx < 0) fail("--ctx must be >= 1");
  const SamplerParams sampling{o.temperature, o.top_k, o.top_p, o.seed};
  sampling.validate();
  const int threads = resolve_threads(o.threads);
  // Output files are checked before any work, so that a typo does not cost a prefill.
  if (!o.json_path.empty()) check_output_path(o.json_path, "--json");
  if (!o.logits_path.empty()) check_output_path(o.logits_path, "--save-logits");
  if (!o.halting_map.empty()) check_halting_map_path(o.halting_map);
  if (!o.dump_deltas.empty()) check_deltas_path(o.dump_deltas);
  cpu::set_num_threads(threads);

  const auto t_load = Clock::now();
  auto model = Model::load(o.model, o.tokenizer);
  const HParams& hp = model->hp();
  const Tokenizer& tok = model->tokenizer();
  const double load_ms = ms_since(t_load);
  const int64_t ctx_limit = o.ctx > 0 ? o.ctx : hp.n_ctx_train;
  // A prompt file is read only up to what the context could hold.
  const std::string text = o.prompt_file.empty() ? o.prompt : read_file(o.prompt_file, prompt_file_cap(ctx_limit), "a prompt of this context can use (a larger --ctx allows more)");
  if (o.prompt_ids.empty() && text.empty() && o.query.empty()) fail("empty prompt");

  Prompt pt;
  if (!o.prompt_ids.empty()) {
    if (o.chat || !o.query.empty()) fail("--prompt-ids cannot be combined with --chat or --query");
    pt.document = parse_ids(o.prompt_ids, tok.n_vocab());
  } else {
    pt = tokenize_prompt(*model, text, o.query, o.chat);
  }
  const int64_t n_prompt = pt.size();
  if (n_prompt == 0) fail("empty prompt: it has no tokens");
  if (n_prompt > ctx_limit) {
    fail("the prompt has {} tokens, more than the context of {} tokens{}", n_prompt, ctx_limit,
         o.ctx > 0 ? "" : " the model was trained for (raise it with --ctx)");
  }
  int64_t n_predict = o.n_predict;
  if (n_prompt + n_predict > ctx_limit) {
    n_predict = ctx_limit - n_prompt;
    fmt::print(stderr, "warning: only {} new tokens fit the context of {}\n", n_predict, ctx_limit);
  }

  const HaltingConfig hc = resolve_halting(o.halting, hp.n_layer, o.seed, o.model, /*calibrated_default=*/true);
  if (!hc.enabled() && !o.halting_map.empty()) fail("--halting-map needs a --halting policy");

  auto engine_ptr = make_engine(*model, n_prompt + n_predict, o.backend, resolve_cache_type(o.kv_type, o.backend));
  InferenceEngine& engine = *engine_ptr;
  Session session(engine, tok);
  const bool show_progress = !o.quiet && stderr_is_tty() && n_prompt >= 256;
  HaltingTrace trace;
  PrefillRequest req;
  req.halting = &hc;
  req.trace = hc.enabled() || !o.dump_deltas.empty() ? &trace : nullptr;
  req.layer_times = true;
  if (!o.logits_path.empty()) req.logits_last = o.logits_last > 0 ? std::min(o.logits_last, n_prompt) : n_prompt;
  if (show_progress) req.progress = [](int d, int t) { progress_bar("prefill", d, t); };
  // With halting, the document is prefilled with halting and the query after it in full,
  // attending to whatever the document left in the cache (as the KVPress harness does).
  const PrefillResult pr = session.prefill(pt, req);
  const ForwardStats& pst = pr.stats;
  if (show_progress) progress_clear();
  if (!o.logits_path.empty()) {
    write_file_atomically(o.logits_path, std::string_view(reinterpret_cast<const char*>(pr.logits.data()), pr.logits.size() * sizeof(float)));
  }
  if (!o.dump_deltas.empty()) write_deltas(o.dump_deltas, trace);
  if (!o.halting_map.empty()) write_halting_map(o.halting_map, trace, hc.describe(hp.n_layer));

  // Decode, streaming each piece of text as it is complete.
  GenerateOptions go;
  go.max_tokens = n_predict;
  go.sampling = sampling;
  go.ignore_eos = o.ignore_eos;
  go.on_text = [](const std::string& piece) {
    fmt::print("{}", piece);
    std::fflush(stdout);
    return true;
  };
  const Generation gen = session.generate(pr.last(hp.n_vocab), pt.tokens().back(), go);
  fmt::print("\n");
  std::fflush(stdout);
  const std::vector<int32_t>& generated = gen.ids;
  const std::string& generated_text = gen.text;
  const std::string& stop_reason = gen.stop_reason;
  const double decode_ms = gen.ms;
  const auto n_decode_passes = static_cast<double>(gen.forward_passes);
  const double prefill_tps = pst.total_ms > 0 ? static_cast<double>(n_prompt) * 1000.0 / pst.total_ms : 0.0;
  const double decode_tps = decode_ms > 0 && n_decode_passes > 0 ? n_decode_passes * 1000.0 / decode_ms : 0.0;

  if (!o.quiet) {
    fmt::print(stderr, "prompt: {} tokens ({} document + {} query) | load {:.0f} ms\n", n_prompt, pt.document.size(),
               pt.query.size(), load_ms);
    fmt::print(stderr, "prefill: {:.1f} ms, {:.1f} tokens/s | decode: {} tokens, {:.1f} tokens/s | threads {}\n",
               pst.total_ms, prefill_tps, generated.size(), decode_tps, threads);
    fmt::print(stderr, "kernels: {}\n", engine.kernels());
    if (hc.enabled()) {
      fmt::print(stderr, "halting: {} | {} of {} {} tokens active after the decision | FLOP speedup {:.2f}x\n",
                 hc.describe(hp.n_layer), trace.active_per_layer.back(), trace.n_tokens,
                 pr.joint ? "prompt (document and query as one segment)" : "document",
                 trace.flop_speedup());
    }
  }

  if (!o.json_path.empty()) {
    nlohmann::json j;
    j["model"] = model->name();
    j["model_path"] = o.model;
    j["arch"] = hp.arch_str;
    j["n_layers"] = hp.n_layer;
    j["n_ctx"] = engine.n_ctx();
    j["backend"] = o.backend;
    j["kernels"] = engine.kernels();
    j["threads"] = threads;
    j["n_prompt_tokens"] = n_prompt;
    j["n_document_tokens"] = pt.document.size();
    j["n_query_tokens"] = pt.query.size();
    j["load_ms"] = load_ms;
    j["prefill_ms"] = pst.total_ms;
    j["prefill_tokens_per_s"] = prefill_tps;
    j["layer_ms"] = pst.layer_ms;
    j["decode_ms"] = decode_ms;
    j["decode_tokens_per_s"] = decode_tps;
    j["n_generated_tokens"] = generated.size();
    j["generated_text"] = generated_text;
    j["generated_token_ids"] = generated;
    j["stop_reason"] = stop_reason;
    if (hc.enabled()) j["halting"] = halting_json(hc, hp.n_layer, trace, pst.layer_ms);
    j["sampling"] = {{"temperature", o.temperature}, {"top_k", o.top_k}, {"top_p", o.top_p}, {"seed", o.seed}};
    write_file_atomically(o.json_path, j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  }
  return 0;
}

}  // namespace

void add_run_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* c = app.add_subcommand("run", "Prefill a prompt and generate text");
  c->add_option("-m,--model", o->model, "Model file: GGUF, safetensors (file, index or folder) or llama2.c .bin")->required();
  c->add_option("--tokenizer", o->tokenizer, "Tokenizer file (llama2.c tokenizer.bin, GGUF or tokenizer.json)");
  CLI::Option* p_text = c->add_option("-p,--prompt", o->prompt, "Prompt text");
  CLI::Option* p_file = c->add_option("-f,--file", o->prompt_file, "Read the prompt from a file");
  CLI::Option* p_ids = c->add_option("--prompt-ids", o->prompt_ids, "Prompt as token ids, comma-separated (e.g. 1 for BOS only)");
  c->add_option("--query", o->query, "Question appended after the prompt (never halted)");
  c->add_option("-n,--n-predict", o->n_predict, "New tokens to generate")->capture_default_str();
  c->add_option("--temp", o->temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  c->add_option("--top-k", o->top_k, "Top-k cut (0: off)")->capture_default_str();
  c->add_option("--top-p", o->top_p, "Top-p (nucleus) cut (1: off)")->capture_default_str();
  c->add_option("--seed", o->seed, "Random seed for sampling")->check(seed_range())->capture_default_str();
  c->add_option("-t,--threads", o->threads, "Threads (default: all cores)");
  c->add_option("-c,--ctx", o->ctx, "Context size in tokens (default: the model's)")->check(whole_number(0, std::numeric_limits<int32_t>::max()));
  c->add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template");
  c->add_flag("--ignore-eos", o->ignore_eos, "Keep generating past end-of-generation tokens");
  c->add_option("--json", o->json_path, "Write a JSON summary to this file");
  c->add_option("--save-logits", o->logits_path, "Write the logits of every prompt position (float32, tokens x vocab)");
  c->add_option("--save-logits-last", o->logits_last, "With --save-logits: only the last N prompt positions")->check(whole_number(0, std::numeric_limits<int32_t>::max()));
  c->add_option("--backend", o->backend, "Compute backend: cpu or cuda")->capture_default_str();
  add_kv_type_option(c, o->kv_type);
  add_halting_flags(c, o->halting);
  c->footer(
      "Without any halting flag, run uses the model's calibration (MODEL.dash.json, written by dashlm calibrate) when it\n"
      "was chosen within a retrieval budget as well as the NLL budget (calibrate --max-retrieval-drop), and full prefill\n"
      "otherwise; --halting none always runs full prefill.");
  c->add_option("--halting-map", o->halting_map, "Draw where tokens halted and their deltas (.png or .svg)");
  c->add_option("--dump-deltas", o->dump_deltas, "Write the deltas, tokens x layers (.npy float32, or .csv)");
  c->add_flag("-q,--quiet", o->quiet, "No summary or progress on stderr");
  c->callback([o, &action, p_text, p_file, p_ids] {
    o->given_sources = p_text->count() + p_file->count() + p_ids->count();
    action = [o] { return run(*o); };
  });
}

}  // namespace dashlm::cli
