#include "frontends/server/api.h"

#include <algorithm>
#include <cmath>

#include "common/json.h"
#include "runtime/dash/calibration.h"

namespace dashlm::server {

using nlohmann::json;

void bad_request(const std::string& code, const std::string& message) {
  throw ApiError(400, "invalid_request_error", code, message);
}

json error_body(const std::string& message, const std::string& type, const std::string& code) {
  return {{"error", {{"message", message}, {"type", type}, {"code", code}, {"param", nullptr}}}};
}

namespace {

// Fields OpenAI defines that dashlm does not implement: accepted only at their neutral value.
void refuse_unsupported(const JsonObject& o, Endpoint e) {
  auto unsupported = [](std::string_view field, const std::string& why) {
    bad_request("unsupported", fmt::format("'{}' is not supported by this server{}", field, why));
  };
  for (const char* f : {"tools", "functions", "function_call", "audio", "modalities", "prediction"}) {
    if (o.has(f)) unsupported(f, "");
  }
  if (const json* tc = o.find("tool_choice"); tc && !(tc->is_string() && tc->get<std::string>() == "none")) unsupported("tool_choice", "");
  if (o.has("n") && o.integer("n") != 1) unsupported("n", " (one choice per request: n must be 1)");
  if (o.has("best_of") && o.integer("best_of") != 1) unsupported("best_of", " (best_of must be 1)");
  for (const char* f : {"frequency_penalty", "presence_penalty"}) {
    if (o.has(f) && o.number(f) != 0) unsupported(f, " (only 0)");
  }
  if (const json* lb = o.find("logit_bias"); lb && !(lb->is_object() && lb->empty())) unsupported("logit_bias", "");
  if (const json* lp = o.find("logprobs"); lp && !(lp->is_boolean() && !lp->get<bool>())) unsupported("logprobs", "");
  if (o.has("top_logprobs")) unsupported("top_logprobs", "");
  if (e == Endpoint::Completion) {
    if (o.boolean_or("echo", false)) unsupported("echo", "");
    if (!o.string_or("suffix", "").empty()) unsupported("suffix", "");
  }
  if (const json* rf = o.find("response_format")) {
    const JsonObject r(*rf, "request: response_format");
    if (r.string("type") != "text") unsupported("response_format", " (only {\"type\": \"text\"})");
  }
}

// A message's content: a string, or an array of text parts.
std::string message_content(const JsonObject& m, size_t i) {
  const json* c = m.find("content");
  if (!c) {
    if (m.string("role") == "assistant") return "";
    bad_request("invalid_value", fmt::format("messages[{}]: 'content' is missing", i));
  }
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) bad_request("invalid_type", fmt::format("messages[{}]: 'content' is {}, expected a string or an array of text parts", i, json_describe(*c)));
  std::string text;
  for (size_t k = 0; k < c->size(); ++k) {
    const JsonObject part((*c)[k], fmt::format("request: messages[{}].content[{}]", i, k));
    const std::string type = part.string("type");
    if (type != "text") bad_request("unsupported", fmt::format("messages[{}].content[{}]: parts of type '{}' are not supported (text only)", i, k, type));
    text += part.string("text");
  }
  return text;
}

std::vector<std::string> stop_strings(const json& v) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    if (v.size() > 4) bad_request("invalid_value", fmt::format("'stop' has {} strings, at most 4 are allowed", v.size()));
    for (const json& s : v) {
      if (!s.is_string()) bad_request("invalid_type", fmt::format("'stop' holds {}, expected strings", json_describe(s)));
      out.push_back(s.get<std::string>());
    }
  } else {
    bad_request("invalid_type", fmt::format("'stop' is {}, expected a string or an array of strings", json_describe(v)));
  }
  for (const std::string& s : out)
    if (s.empty()) bad_request("invalid_value", "'stop' strings must not be empty");
  return out;
}

DashRequest dash_request(const json& v) {
  DashRequest d;
  d.given = true;
  if (v.is_string()) {
    d.spec = v.get<std::string>();
    if (d.spec.empty()) bad_request("invalid_value", "'dash' is empty: give a policy, a spec such as \"topk:0.4:0.33\", \"auto\" or \"none\"");
    return d;
  }
  if (!v.is_object()) bad_request("invalid_type", fmt::format("'dash' is {}, expected a string or an object", json_describe(v)));
  // A setting by its name ("kv_mode") or its flag's ("kv" for --kv); the seed is the server's.
  auto find = [](const std::string& key) -> std::optional<Setting> {
    for (int i = 0; i <= static_cast<int>(Setting::ProtectLast); ++i) {
      const auto s = static_cast<Setting>(i);
      if (s == Setting::Seed) continue;
      std::string flag = std::string(setting_flag(s)).substr(2);
      std::replace(flag.begin(), flag.end(), '-', '_');
      if (key == setting_name(s) || key == flag) return s;
    }
    return std::nullopt;
  };
  for (const auto& [key, value] : v.items()) {
    const std::optional<Setting> s = find(key);
    if (!s) {
      std::string names;
      for (int i = 0; i <= static_cast<int>(Setting::ProtectLast); ++i)
        if (static_cast<Setting>(i) != Setting::Seed) names += std::string(names.empty() ? "" : ", ") + setting_name(static_cast<Setting>(i));
      bad_request("invalid_value", fmt::format("'dash' has an unknown setting {} (settings: {})", json_describe(json(key)), names));
    }
    std::string text;
    if (value.is_string()) {
      text = value.get<std::string>();
    } else if (value.is_number_integer() || value.is_number_unsigned()) {
      text = value.dump();
    } else if (value.is_number_float()) {
      text = fmt::format("{}", value.get<double>());
    } else {
      bad_request("invalid_type", fmt::format("dash.{} is {}, expected a number or a string", key, json_describe(value)));
    }
    d.settings.emplace_back(*s, text);
  }
  return d;
}

GenerationRequest parse_fields(Endpoint e, const JsonObject& o) {
  GenerationRequest r;
  r.endpoint = e;
  refuse_unsupported(o, e);
  r.model = o.string_or("model", "");
  if (e == Endpoint::Chat) {
    const json& msgs = o.array("messages");
    if (msgs.empty()) bad_request("invalid_value", "'messages' is empty");
    for (size_t i = 0; i < msgs.size(); ++i) {
      const JsonObject m(msgs[i], fmt::format("request: messages[{}]", i));
      if (m.has("tool_calls") || m.string("role") == "tool" || m.string("role") == "function") {
        bad_request("unsupported", fmt::format("messages[{}]: tool messages are not supported", i));
      }
      std::string role = m.string("role");
      if (role == "developer") role = "system";  // OpenAI's newer name for the system role
      if (role != "system" && role != "user" && role != "assistant") {
        bad_request("invalid_value", fmt::format("messages[{}]: unknown role '{}' (system, user or assistant)", i, role));
      }
      r.messages.push_back({role, message_content(m, i)});
    }
    if (r.messages.back().role != "user") bad_request("invalid_value", "the last message must be the user's");
  } else {
    const json& p = o.at("prompt");
    if (p.is_string()) {
      r.prompt = p.get<std::string>();
    } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
      r.prompt = p[0].get<std::string>();
    } else {
      bad_request("invalid_type", fmt::format("'prompt' is {}, expected a string (one prompt per request)", json_describe(p)));
    }
    if (r.prompt.empty()) bad_request("invalid_value", "'prompt' is empty");
  }
  for (const char* key : {"max_completion_tokens", "max_tokens"}) {
    if (!o.has(key)) continue;
    const int64_t n = o.integer(key);
    if (n < 1) bad_request("invalid_value", fmt::format("'{}' must be at least 1, got {}", key, n));
    r.max_tokens = n;
    break;
  }
  r.sampling.temperature = 1.f;
  r.sampling.top_p = 1.f;
  r.sampling.top_k = 0;
  if (o.has("temperature")) {
    const double t = o.number("temperature");
    if (!(t >= 0 && t <= 2)) bad_request("invalid_value", fmt::format("'temperature' must be in [0, 2], got {}", t));
    r.sampling.temperature = static_cast<float>(t);
  }
  if (o.has("top_p")) {
    const double p = o.number("top_p");
    if (!(p > 0 && p <= 1)) bad_request("invalid_value", fmt::format("'top_p' must be in (0, 1], got {}", p));
    r.sampling.top_p = static_cast<float>(p);
  }
  if (o.has("top_k")) {
    const int64_t k = o.integer("top_k");
    if (k < 0 || k > (1 << 30)) bad_request("invalid_value", fmt::format("'top_k' must be >= 0, got {}", k));
    r.sampling.top_k = static_cast<int>(k);
  }
  if (o.has("seed")) {
    r.sampling.seed = static_cast<uint64_t>(o.integer("seed"));  // distinct integers, distinct seeds
    r.seeded = true;
  }
  if (const json* s = o.find("stop")) r.stop = stop_strings(*s);
  r.stream = o.boolean_or("stream", false);
  if (const json* so = o.find("stream_options")) {
    const JsonObject s(*so, "request: stream_options");
    r.include_usage = s.boolean_or("include_usage", false);
  }
  r.ignore_eos = o.boolean_or("ignore_eos", false);
  r.halting_map = o.boolean_or("halting_map", false);
  if (const json* d = o.find("dash")) r.dash = dash_request(*d);
  return r;
}

}  // namespace

void read_request_object(std::string_view body, const std::function<void(const JsonObject&)>& read) {
  json j;
  try {
    j = parse_json(body, "request body");
  } catch (const Error& err) {
    throw ApiError(400, "invalid_request_error", "invalid_json", err.what());
  }
  try {
    read(JsonObject(j, "request"));
  } catch (const ApiError&) {
    throw;
  } catch (const Error& err) {
    bad_request("invalid_value", err.what());
  }
}

GenerationRequest parse_generation_request(Endpoint e, std::string_view body) {
  GenerationRequest r;
  read_request_object(body, [&](const JsonObject& o) { r = parse_fields(e, o); });
  return r;
}

HaltingConfig resolve_dash(const DashRequest& d, const HaltingConfig& server_default, int n_layer, uint64_t seed,
                           const std::string& model_path) {
  if (!d.given) return server_default;
  try {
    if (!d.spec.empty()) {
      // A bare name is the policy with its default settings ("auto": the calibrated one).
      if (d.spec.find(':') == std::string::npos) return resolve_halting_settings({{Setting::Policy, d.spec}}, n_layer, seed, model_path);
      HaltingConfig hc = HaltingConfig::parse(d.spec);
      hc.seed = seed;
      hc.validate(n_layer);
      return hc;
    }
    return resolve_halting_settings(d.settings, n_layer, seed, model_path);
  } catch (const SettingError& e) {
    bad_request("invalid_value", fmt::format("dash.{}", e.what()));
  } catch (const Error& e) {
    bad_request("invalid_value", fmt::format("dash: {}", e.what()));
  }
}

std::string StopMatcher::push(const std::string& piece) {
  if (stopped_) return "";
  held_ += piece;
  // A complete stop string: the text before the earliest one goes out, the rest is dropped.
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest tail that begins some stop string.
  size_t keep = 0;
  for (const std::string& s : stops_) {
    for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  return out;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

json dash_json(const DashReport& d) {
  json j = {{"prefill_ms", d.prefill_ms},       {"cached_tokens", d.cached_tokens}, {"prefilled_tokens", d.prefilled_tokens},
            {"halted_tokens", d.halted_tokens}, {"flop_speedup", d.flop_speedup},   {"halting", d.halting}};
  if (!d.halting_map.empty()) j["halting_map_svg"] = d.halting_map;
  return j;
}

json completion_json(Endpoint e, const std::string& id, int64_t created, const std::string& model, const std::string& text,
                     const std::string& finish_reason, const Usage& u, const DashReport& d) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason}};
  if (e == Endpoint::Chat) {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
    choice["logprobs"] = nullptr;
  } else {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  }
  return {{"id", id},
          {"object", e == Endpoint::Chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})},
          {"usage", usage_json(u)},
          {"dashlm", dash_json(d)}};
}

json chunk_json(Endpoint e, const std::string& id, int64_t created, const std::string& model, const std::string& text,
                const std::string* finish_reason, bool role) {
  json choice = {{"index", 0}, {"finish_reason", finish_reason ? json(*finish_reason) : json(nullptr)}};
  if (e == Endpoint::Chat) {
    json delta = json::object();
    if (role) delta["role"] = "assistant";
    if (!text.empty() || role) delta["content"] = text;
    choice["delta"] = delta;
    choice["logprobs"] = nullptr;
  } else {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  }
  return {{"id", id},
          {"object", e == Endpoint::Chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

}  // namespace dashlm::server
