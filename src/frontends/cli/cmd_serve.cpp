// dashlm serve: the OpenAI-compatible HTTP server (frontends/server).
#include <memory>
#include <string>

#include <fmt/format.h>

#include "backends/cpu/ops.h"
#include "common/error.h"
#include "frontends/cli/commands.h"
#include "frontends/cli/common.h"
#include "frontends/cli/halting_output.h"
#include "frontends/server/server.h"
#include "model/model.h"
#include "runtime/engine_factory.h"

namespace dashlm::cli {

namespace {

struct ServeFlags {
  server::ServerOptions o;
  HaltingFlags halting;
  double max_body_mib = 16;
};

int serve(ServeFlags& f) {
  server::ServerOptions& o = f.o;
  if (o.port < 0 || o.port > 65535) fail("--port must be in 0..65535 (0: any free port), got {}", o.port);
  if (o.slots < 1 || o.slots > 256) fail("--slots must be in 1..256, got {}", o.slots);
  if (o.queue < 0 || o.queue > 4096) fail("--queue must be in 0..4096, got {}", o.queue);
  if (o.ctx < 0) fail("--ctx must be >= 1 (or 0: the model's, at most {})", server::kDefaultCtx);
  if (!(o.timeout_s > 0)) fail("--timeout must be > 0 seconds, got {}", o.timeout_s);
  if (!(f.max_body_mib > 0 && f.max_body_mib <= 4096)) fail("--max-body must be in (0, 4096] MiB, got {}", f.max_body_mib);
  o.max_body_bytes = static_cast<size_t>(f.max_body_mib * (1 << 20));
  cpu::set_num_threads(resolve_threads(o.threads));
  auto model = Model::load(o.model_path, o.tokenizer_path);
  if (o.ctx > model->hp().n_ctx_train) {
    fmt::print(stderr, "warning: --ctx {} is more than the {} tokens the model was trained for\n", o.ctx, model->hp().n_ctx_train);
  }
  (void)resolve_cache_type(o.kv_type, o.backend);  // refuses a type the backend lacks
  o.halting = resolve_halting(f.halting, model->hp().n_layer, o.seed, o.model_path);
#ifdef DASHLM_NO_SERVER
  fail("this build has no server: build with cpp-httplib (Debian: libcpp-httplib-dev)");
#else
  return server::serve(o, *model);
#endif
}

}  // namespace

void add_serve_command(CLI::App& app, Action& action) {
  auto f = std::make_shared<ServeFlags>();
  server::ServerOptions& o = f->o;
  CLI::App* c = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API (with a chat page at /)");
  c->add_option("-m,--model", o.model_path, "Model file: GGUF, safetensors (file, index or folder) or llama2.c .bin")->required();
  c->add_option("--tokenizer", o.tokenizer_path, "Tokenizer file (llama2.c tokenizer.bin, GGUF or tokenizer.json)");
  c->add_option("--alias", o.alias, "Model id the API shows (default: the model file's name)");
  c->add_option("--host", o.host, "Address to listen on")->capture_default_str();
  c->add_option("--port", o.port, "Port (0: any free port; the one chosen is printed)")->capture_default_str();
  c->add_option("--backend", o.backend, "Compute backend: cpu or cuda")->capture_default_str();
  add_kv_type_option(c, o.kv_type);
  c->add_option("-t,--threads", o.threads, "Compute threads (default: all cores)");
  c->add_option("-c,--ctx", o.ctx, fmt::format("Tokens per slot, prompt and answer (default: the model's context, at most {})", server::kDefaultCtx));
  c->add_option("--slots", o.slots, "Requests served at once, each with its own KV cache")->capture_default_str();
  c->add_option("--queue", o.queue, "Requests that may wait for a slot (more get 503)")->capture_default_str();
  c->add_option("--api-key", o.api_key, "Require 'Authorization: Bearer KEY' on the API");
  c->add_option("--timeout", o.timeout_s, "Seconds a request may take, waiting included")->capture_default_str();
  c->add_option("--max-body", f->max_body_mib, "Largest request body, MiB (larger: 413)")->capture_default_str();
  c->add_option("--seed", o.seed, "Seed of the random halting policy")->capture_default_str();
  add_halting_flags(c, f->halting);
  c->add_flag("-q,--quiet", o.quiet, "No request log on stderr");
  c->callback([f, &action] { action = [f] { return serve(*f); }; });
}

}  // namespace dashlm::cli
