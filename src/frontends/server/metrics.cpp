#include "frontends/server/metrics.h"

#include <fmt/format.h>

namespace dashlm::server {

void Histogram::observe(double v) {
  for (size_t i = 0; i < bounds_.size(); ++i) {
    if (v <= bounds_[i]) {
      ++counts_[i];
      break;
    }
  }
  ++count_;
  sum_ += v;
}

std::string Histogram::text(const std::string& name, const std::string& help) const {
  std::string s = fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    s += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  s += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name, sum_, name, count_);
  return s;
}

void Metrics::record(const RequestRecord& r) {
  std::lock_guard lk(m_);
  ++requests_;
  prompt_tokens_ += static_cast<uint64_t>(r.prompt_tokens);
  generated_tokens_ += static_cast<uint64_t>(r.generated_tokens);
  cached_tokens_ += static_cast<uint64_t>(r.cached_tokens);
  prefilled_tokens_ += static_cast<uint64_t>(r.prefilled_tokens);
  halted_tokens_ += static_cast<uint64_t>(r.halted_tokens);
  ttft_.observe(r.ttft_s);
  prefill_.observe(r.prefill_s);
  if (r.halting) {
    ++halting_requests_;
    speedup_.observe(r.flop_speedup);
  }
}

void Metrics::count_error(int status) {
  std::lock_guard lk(m_);
  (status >= 500 ? errors_5xx_ : errors_4xx_) += 1;
}

std::string Metrics::text(int running, int waiting, int slots) const {
  std::lock_guard lk(m_);
  std::string s;
  auto one = [&s](const char* name, const char* type, const char* help, auto value) {
    s += fmt::format("# HELP dashlm:{} {}\n# TYPE dashlm:{} {}\ndashlm:{} {}\n", name, help, name, type, name, value);
  };
  one("requests_total", "counter", "Requests answered (generation endpoints).", requests_);
  one("request_errors_4xx_total", "counter", "Requests refused for bad input (4xx).", errors_4xx_);
  one("request_errors_5xx_total", "counter", "Requests that failed on the server side or were turned away (5xx).", errors_5xx_);
  one("prompt_tokens_total", "counter", "Prompt tokens of answered requests.", prompt_tokens_);
  one("generation_tokens_total", "counter", "Tokens generated.", generated_tokens_);
  one("prefix_cache_hit_tokens_total", "counter", "Prompt tokens reused from a slot's KV cache.", cached_tokens_);
  one("prefilled_tokens_total", "counter", "Prompt tokens prefilled (not reused).", prefilled_tokens_);
  one("halted_tokens_total", "counter", "Prompt tokens that DASH halted during prefill.", halted_tokens_);
  one("halting_requests_total", "counter", "Requests prefilled with a halting policy.", halting_requests_);
  one("requests_running", "gauge", "Requests holding a slot.", running);
  one("requests_waiting", "gauge", "Requests waiting for a slot.", waiting);
  one("slots", "gauge", "Slots (sequences served at once).", slots);
  s += ttft_.text("dashlm:time_to_first_token_seconds", "Time from a request's arrival to its first generated token.");
  s += prefill_.text("dashlm:prefill_seconds", "Wall time of a request's prefill.");
  s += speedup_.text("dashlm:halting_flop_speedup", "FLOP-model speedup of halting, per prefill with a halting policy.");
  return s;
}

}  // namespace dashlm::server
