// dashlm inspect: what a model file holds (format, architecture, hyperparameters, tensors).
#include <map>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "frontends/cli/commands.h"
#include "model/chat.h"
#include "model/model.h"

namespace dashlm::cli {

namespace {

struct InspectOptions {
  std::string model, tokenizer;
  bool json = false;
  bool all_metadata = false;
};

nlohmann::json hparams_json(const HParams& hp) {
  return {{"arch", hp.arch_str},
          {"n_vocab", hp.n_vocab},
          {"n_embd", hp.n_embd},
          {"n_layer", hp.n_layer},
          {"n_head", hp.n_head},
          {"n_head_kv", hp.n_head_kv},
          {"head_dim", hp.head_dim},
          {"n_ff", hp.n_ff},
          {"n_ctx_train", hp.n_ctx_train},
          {"norm_eps", hp.norm_eps},
          {"rope_base", hp.rope_base},
          {"rope_base_local", hp.rope_base_local},
          {"rope_freq_scale", hp.rope_freq_scale},
          {"n_rot", hp.n_rot},
          {"rope_type", hp.rope_neox ? "neox" : "normal"},
          {"sliding_window", hp.sliding_window},
          {"swa_pattern", hp.swa_pattern},
          {"embed_scale", hp.embed_scale},
          {"attn_scale", hp.attn_scale},
          {"activation", hp.act == Activation::GeluTanh ? "gelu_tanh" : "silu"},
          {"tied_embeddings", hp.tied_embeddings}};
}

int inspect(const InspectOptions& o) {
  auto model = Model::load(o.model, o.tokenizer, /*keep_vocab_metadata=*/true);
  const ModelFile& f = model->file();
  const HParams& hp = model->hp();
  const Tokenizer& tok = model->tokenizer();
  std::map<std::string, int> type_counts;
  int64_t n_params = 0;
  size_t n_bytes = 0;
  for (const TensorInfo& t : f.tensors) {
    ++type_counts[std::string(dtype_name(t.type))];
    n_params += t.n_elements();
    n_bytes += t.nbytes;
  }
  const ChatFormat chat = chat_format_of(f.meta);

  if (o.json) {
    nlohmann::json j;
    j["path"] = f.path;
    j["format"] = f.format;
    if (f.format_version) j["format_version"] = f.format_version;
    j["name"] = model->name();
    j["hparams"] = hparams_json(hp);
    j["n_params"] = n_params;
    j["tensor_bytes"] = n_bytes;
    j["tokenizer"] = {{"model", tok.model_name()}, {"pre", tok.pre_name()}, {"n_vocab", tok.n_vocab()},
                      {"bos", tok.bos()}, {"eos", tok.eos()}, {"add_bos", tok.add_bos_default()},
                      {"chat_format", chat_format_name(chat)}};
    nlohmann::json tensors = nlohmann::json::array();
    for (const TensorInfo& t : f.tensors) tensors.push_back({{"name", t.name}, {"type", dtype_name(t.type)}, {"shape", t.ne}});
    j["tensors"] = tensors;
    if (o.all_metadata) {
      nlohmann::json meta;
      for (const auto& [k, v] : f.meta.all()) meta[k] = v.to_display(16);
      j["metadata"] = meta;
    }
    fmt::print("{}\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
    return 0;
  }

  fmt::print("file:          {}\n", f.path);
  fmt::print("format:        {}{}\n", f.format, f.format_version ? fmt::format(" v{}", f.format_version) : "");
  fmt::print("name:          {}\n", model->name());
  fmt::print("architecture:  {}\n", hp.arch_str);
  fmt::print("parameters:    {:.1f} M in {} tensors, {:.1f} MiB\n", static_cast<double>(n_params) / 1e6, f.tensors.size(),
             static_cast<double>(n_bytes) / (1024.0 * 1024.0));
  fmt::print("layers:        {}\n", hp.n_layer);
  fmt::print("embedding:     {}\n", hp.n_embd);
  fmt::print("heads:         {} query, {} key/value, head size {}\n", hp.n_head, hp.n_head_kv, hp.head_dim);
  fmt::print("feed-forward:  {} ({})\n", hp.n_ff, hp.act == Activation::GeluTanh ? "GeGLU, tanh GELU" : "SwiGLU");
  fmt::print("context:       {} tokens (trained)\n", hp.n_ctx_train);
  fmt::print("rope:          {} pairs, base {}{}, {} of {} dims{}\n", hp.rope_neox ? "neox" : "normal", hp.rope_base,
             hp.sliding_window > 0 ? fmt::format(" (local layers {})", hp.rope_base_local) : "", hp.n_rot, hp.head_dim,
             hp.rope_freq_scale != 1.f ? fmt::format(", linear scale {}", hp.rope_freq_scale) : "");
  if (hp.sliding_window > 0) {
    fmt::print("sliding:       window {}, every {}th layer global\n", hp.sliding_window, hp.swa_pattern);
  }
  fmt::print("norm eps:      {}\n", hp.norm_eps);
  fmt::print("embeddings:    {}{}\n", hp.tied_embeddings ? "tied to the output" : "separate output matrix",
             hp.embed_scale != 1.f ? fmt::format(", scaled by {:.4g}", hp.embed_scale) : "");
  fmt::print("tokenizer:     {} (pre: {}), {} tokens, bos {}, eos {}, add bos {}, chat {}\n", tok.model_name(), tok.pre_name(),
             tok.n_vocab(), tok.bos(), tok.eos(), tok.add_bos_default(), chat_format_name(chat));
  std::string types;
  for (const auto& [name, n] : type_counts) types += fmt::format("{}{} x{}", types.empty() ? "" : ", ", name, n);
  fmt::print("tensor types:  {}\n", types);
  if (o.all_metadata) {
    fmt::print("\nmetadata:\n");
    for (const auto& [k, v] : f.meta.all()) fmt::print("  {} = {}\n", k, v.to_display(8));
  }
  fmt::print("\ntensors:\n");
  for (const TensorInfo& t : f.tensors) fmt::print("  {:<40} {:<6} {}\n", t.name, dtype_name(t.type), t.shape_str());
  return 0;
}

}  // namespace

void add_inspect_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<InspectOptions>();
  CLI::App* c = app.add_subcommand("inspect", "Show a model file's architecture, hyperparameters and tensors");
  c->add_option("-m,--model", o->model, "Model file")->required();
  c->add_option("--tokenizer", o->tokenizer, "Tokenizer file (for llama2.c checkpoints)");
  c->add_flag("--json", o->json, "Print JSON");
  c->add_flag("--metadata", o->all_metadata, "Also list every metadata key");
  c->callback([o, &action] { action = [o] { return inspect(*o); }; });
}

}  // namespace dashlm::cli
