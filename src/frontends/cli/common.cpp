#include "frontends/cli/common.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <limits>
#include <thread>

#include <fmt/format.h>

#include "backends/cpu/q8.h"
#include "common/error.h"
#include "runtime/engine_factory.h"

namespace dashlm::cli {

CLI::Validator whole_number(int64_t lo, uint64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        const std::string range = fmt::format("must be a whole number from {} to {}, got '{}'", lo, hi, s);
        const char* b = s.data();
        const char* e = s.data() + s.size();
        if (!s.empty() && s[0] == '-') {
          int64_t v = 0;
          const auto r = std::from_chars(b, e, v);
          return r.ec == std::errc() && r.ptr == e && v >= lo ? "" : range;
        }
        uint64_t v = 0;
        const auto r = std::from_chars(b, e, v);
        const bool ok = r.ec == std::errc() && r.ptr == e && v <= hi && (lo <= 0 || v >= static_cast<uint64_t>(lo));
        return ok ? "" : range;
      },
      "");
}

CLI::Validator seed_range() { return whole_number(0, std::numeric_limits<uint64_t>::max()); }

void check_int_options(CLI::App& app) {
  for (CLI::Option* o : app.get_options()) {
    if (o->get_type_name() == "INT") o->check(whole_number(std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
  }
  for (CLI::App* sub : app.get_subcommands({})) check_int_options(*sub);
}

void add_compute_option(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands({})) {
    const std::string& name = sub->get_name();
    if (name != "run" && name != "bench" && name != "eval" && name != "calibrate" && name != "serve") continue;
    sub->add_option_function<std::string>(
           "--compute",
           [](const std::string& v) {
             cpu::Compute c = cpu::Compute::q8;
             if (cpu::parse_compute(v.c_str(), &c)) cpu::set_compute_mode(c);
           },
           "Products with quantized weights: q8 (activations quantized to 8 bits per 32 values, integer dot "
           "products; with bf16 weights, activations rounded to bf16 and AVX512-BF16 dot products where the CPU "
           "has them; the default), q8k (the same, but the activations of products with Q4_K, Q5_K and Q6_K "
           "weights per 256 values where the CPU has AVX-512 VNNI, as llama.cpp does: faster, less exact) or "
           "f32 (weights dequantized, float32 throughout: the exact reference). Default from DASHLM_COMPUTE, "
           "else q8")
        ->check(CLI::IsMember({"f32", "q8", "q8k"}));
  }
}

size_t prompt_file_cap(int64_t n_ctx) { return static_cast<size_t>(std::max<int64_t>(n_ctx, 1)) * 64; }

int resolve_threads(int requested) {
  if (requested < 0 || requested > kMaxThreads) fail("--threads must be between 1 and {} (0: all cores), got {}", kMaxThreads, requested);
  return requested > 0 ? requested : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void add_kv_type_option(CLI::App* c, std::string& kv_type) {
  c->add_option("--kv-type", kv_type,
                fmt::format("KV cache element type: f32 or f16 on the CPU (default {}), bf16 or fp8 with --backend cuda "
                            "(default {})",
                            cpu::kv_type_name(kDefaultKvType), cache_type_name(kDefaultCudaCacheType)))
      ->check(CLI::IsMember({"f32", "f16", "bf16", "fp8"}));
}

bool stderr_is_tty() { return isatty(STDERR_FILENO) == 1; }

void progress_bar(const char* label, int done, int total) {
  constexpr int kWidth = 30;
  const int filled = total > 0 ? done * kWidth / total : kWidth;
  fmt::print(stderr, "\r{} [{:=<{}}{:<{}}] {}/{}", label, "", filled, "", kWidth - filled, done, total);
  std::fflush(stderr);
}

void progress_clear() {
  fmt::print(stderr, "\r{:<70}\r", "");
  std::fflush(stderr);
}

}  // namespace dashlm::cli
