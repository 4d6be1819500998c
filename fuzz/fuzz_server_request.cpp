// libFuzzer target: the body of a request to dashlm serve's /v1/chat/completions or
// /v1/completions (the first byte picks which), through the server's parser and the resolution of
// its "dash" settings, as the server runs them before a request reaches a slot. Any input either
// parses into a request the server can run or ends in an ApiError with a 4xx status and a one-line
// message; nothing else may escape.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "frontends/server/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  using namespace dashlm::server;
  const Endpoint e = data[0] & 1 ? Endpoint::Completion : Endpoint::Chat;
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const GenerationRequest r = parse_generation_request(e, body);
    if (e == Endpoint::Chat && (r.messages.empty() || r.messages.back().role != "user")) std::abort();
    if (e == Endpoint::Completion && r.prompt.empty()) std::abort();
    if (r.max_tokens && *r.max_tokens < 1) std::abort();
    if (r.stop.size() > 4) std::abort();
    const dashlm::HaltingConfig hc = resolve_dash(r.dash, dashlm::HaltingConfig{}, 30, 0, "/nonexistent/model.gguf");
    hc.validate(30);
  } catch (const ApiError& err) {
    if (err.status < 400 || err.status >= 500) std::abort();
    if (std::string_view(err.what()).find('\n') != std::string_view::npos) std::abort();
  }
  return 0;
}
