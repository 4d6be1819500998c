// Helpers shared by the CLI subcommands.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "backends/cpu/ops.h"

namespace dashlm::cli {

// A check for an integer option, run on its text before CLI11 converts it (CLI11 keeps the clamped
// value of a number that overflows 64 bits: a seed of 2^64, or of -1, became 2^64 - 1): a whole
// decimal number from lo to hi, else "--seed: must be a whole number from 0 to ..., got '-1'".
CLI::Validator whole_number(int64_t lo, uint64_t hi);
// Every --seed: 0 .. 2^64 - 1.
CLI::Validator seed_range();
// Gives every signed integer option of app and its subcommands (CLI11's type "INT": ints, and the
// few int64 options, which have narrower checks of their own) the check whole_number(-2^31,
// 2^31 - 1), so that 2^31 is refused with the range rather than "Could not convert".
void check_int_options(CLI::App& app);
// --compute f32|q8 on the commands that run a model (sets cpu::set_compute_mode while parsing).
void add_compute_option(CLI::App& app);

// The most bytes a prompt file may hold for a context of n_ctx tokens: 64 bytes a token, far
// above what text tokenizes to (3-5 bytes a token), so that no file that could fit is refused.
size_t prompt_file_cap(int64_t n_ctx);
// The threads a command uses: --threads N (1..kMaxThreads), or all cores for 0.
inline constexpr int kMaxThreads = 1024;
int resolve_threads(int requested);
// --kv-type f32|f16|bf16|fp8: the KV cache type (the CPU engine's f32 or f16, default kDefaultKvType;
// the CUDA engine's bf16 or fp8, default kDefaultCudaCacheType); resolve_cache_type
// (runtime/engine_factory.h) turns the value into the backend's type.
void add_kv_type_option(CLI::App* c, std::string& kv_type);

// True when stderr is a terminal (progress bars are drawn only then).
bool stderr_is_tty();
// Draws or clears a one-line progress bar on stderr.
void progress_bar(const char* label, int done, int total);
void progress_clear();

}  // namespace dashlm::cli
