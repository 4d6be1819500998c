// dashlm serve: an OpenAI-compatible HTTP server over the runtime's slots (runtime/slots.h),
// with DASH per request, prefix reuse across the turns of a chat, Prometheus metrics and a chat
// page. docs/SERVER.md describes the API.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "runtime/dash/config.h"

namespace dashlm {
class Model;
}

namespace dashlm::server {

struct ServerOptions {
  std::string model_path, tokenizer_path, alias;  // alias: the model id clients see (default: the file's name)
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string backend = "cpu";
  std::string kv_type;   // the KV cache's element type (f32, f16 on the CPU; bf16, fp8 on CUDA; "": the default)
  int threads = 0;       // compute threads (0: all cores)
  int64_t ctx = 0;       // tokens per slot (0: the model's context, at most kDefaultCtx)
  int slots = 1;         // sequences served at once
  int queue = 16;        // requests that may wait for a slot
  std::string api_key;   // when set, every API request must carry "Authorization: Bearer KEY"
  double timeout_s = 600;                 // per request
  size_t max_body_bytes = size_t{16} << 20;
  HaltingConfig halting;                  // the default of requests without "dash"
  uint64_t seed = 0;                      // of the random policy in requests' "dash"
  bool quiet = false;                     // no request log on stderr
};

inline constexpr int64_t kDefaultCtx = 8192;

// Listens and serves the model until SIGINT or SIGTERM; returns the exit code. Prints
// "listening on http://HOST:PORT" on stderr once requests are accepted.
int serve(const ServerOptions& o, const Model& model);

}  // namespace dashlm::server
