// The server's counters and histograms, written in Prometheus' text format for GET /metrics.
// Every name starts with "dashlm:".
#pragma once
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace dashlm::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size(), 0) {}
  void observe(double v);
  // "# HELP", "# TYPE" and the _bucket, _sum and _count lines.
  std::string text(const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, not cumulative
  uint64_t count_ = 0;
  double sum_ = 0;
};

// What one finished request adds.
struct RequestRecord {
  int64_t prompt_tokens = 0, generated_tokens = 0, cached_tokens = 0, prefilled_tokens = 0, halted_tokens = 0;
  double ttft_s = 0, prefill_s = 0, flop_speedup = 1;
  bool halting = false;
};

class Metrics {
 public:
  void record(const RequestRecord& r);
  void count_error(int status);
  // The whole exposition; running and waiting are read from the slots at the time of asking.
  std::string text(int running, int waiting, int slots) const;

 private:
  mutable std::mutex m_;
  uint64_t requests_ = 0, prompt_tokens_ = 0, generated_tokens_ = 0, cached_tokens_ = 0, prefilled_tokens_ = 0;
  uint64_t halted_tokens_ = 0, halting_requests_ = 0, errors_4xx_ = 0, errors_5xx_ = 0;
  Histogram ttft_{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
  Histogram prefill_{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
  Histogram speedup_{{1, 1.1, 1.25, 1.5, 2, 3, 4, 8}};
};

}  // namespace dashlm::server
