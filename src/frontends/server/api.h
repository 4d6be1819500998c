// The OpenAI-style HTTP API's requests and responses as plain structs: a request body (JSON) to
// a GenerationRequest, checked field by field, and the response objects built from results.
// Nothing here does HTTP or runs a model, so the parsing is fuzzed on its own.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json.h"
#include "model/chat.h"
#include "runtime/dash/config.h"
#include "runtime/sampler.h"

namespace dashlm::server {

// An error for the client: the HTTP status and OpenAI's error object
// {"error": {"message", "type", "code"}}.
class ApiError : public Error {
 public:
  ApiError(int status, std::string type, std::string code, const std::string& message)
      : Error(message), status(status), type(std::move(type)), code(std::move(code)) {}
  int status;
  std::string type, code;
};
// 400 invalid_request_error with this code ("invalid_value", "unsupported", ...).
[[noreturn]] void bad_request(const std::string& code, const std::string& message);
nlohmann::json error_body(const std::string& message, const std::string& type, const std::string& code);

enum class Endpoint { Chat, Completion };

// The halting a request asks for: absent (the server's own setting), "auto", "none", a spec
// string ("topk:0.4:0.33:drop"), or settings by name ({"policy": "topk", "keep": 0.2}).
struct DashRequest {
  bool given = false;
  std::string spec;                                           // a spec string, "auto" included
  std::vector<std::pair<Setting, std::string>> settings;      // or settings by name
};

struct GenerationRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::string model;
  std::vector<ChatMessage> messages;  // chat
  std::string prompt;                 // completions
  std::optional<int64_t> max_tokens;  // absent: the rest of the context (chat) or 16 (completions)
  SamplerParams sampling;             // OpenAI's defaults: temperature 1, top_p 1, no top-k cut
  bool seeded = false;                // a seed was given (else the server draws one)
  std::vector<std::string> stop;      // at most 4
  bool stream = false;
  bool include_usage = false;         // stream_options.include_usage
  bool ignore_eos = false;
  DashRequest dash;
  bool halting_map = false;           // return the prefill's halting map (SVG) in "dashlm"
};

// Parses a request body as one JSON object and hands it to `read`: malformed JSON is a 400
// invalid_json, any other dashlm::Error that `read` throws (a missing key, a wrong type) a 400
// invalid_value.
void read_request_object(std::string_view body, const std::function<void(const JsonObject&)>& read);

// Parses and checks a request body; throws ApiError (400) naming the field. Settings of the
// "dash" field are parsed by the halting config's own parser only when resolved (resolve_dash).
GenerationRequest parse_generation_request(Endpoint e, std::string_view body);

// The halting configuration of a request for a model of n_layer layers: the server's own when
// the request names none. Throws ApiError (400) for an unknown policy or a bad setting.
HaltingConfig resolve_dash(const DashRequest& d, const HaltingConfig& server_default, int n_layer, uint64_t seed,
                           const std::string& model_path);

// Holds back text that may be the start of a stop string, and finds a complete one.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Adds generated text; returns the text that can go to the client now. After a stop string
  // appears, stopped() is true and the text up to it has been returned.
  std::string push(const std::string& piece);
  // The text held back, at the end of generation.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// What a finished (or finishing) generation reports.
struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
};
struct DashReport {
  double prefill_ms = 0;
  int64_t cached_tokens = 0, prefilled_tokens = 0, halted_tokens = 0;
  double flop_speedup = 1;
  std::string halting;      // the setting, described ("none" for a full prefill)
  std::string halting_map;  // SVG, when asked for
};

nlohmann::json usage_json(const Usage& u);
nlohmann::json dash_json(const DashReport& d);
// The whole response of a non-streamed request.
nlohmann::json completion_json(Endpoint e, const std::string& id, int64_t created, const std::string& model,
                               const std::string& text, const std::string& finish_reason, const Usage& u,
                               const DashReport& d);
// One streamed chunk: a piece of text (or the assistant role's opening when `role` is set), or
// the last one with the finish reason.
nlohmann::json chunk_json(Endpoint e, const std::string& id, int64_t created, const std::string& model,
                          const std::string& text, const std::string* finish_reason, bool role = false);

}  // namespace dashlm::server
