// Helpers shared by the CLI subcommands.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dashlm::cli {

// The most bytes a prompt file may hold for a context of n_ctx tokens: 64 bytes a token, far
// above what text tokenizes to (3-5 bytes a token), so that no file that could fit is refused.
size_t prompt_file_cap(int64_t n_ctx);
// The threads a command uses: --threads N (1..kMaxThreads), or all cores for 0.
inline constexpr int kMaxThreads = 1024;
int resolve_threads(int requested);
// True when stderr is a terminal (progress bars are drawn only then).
bool stderr_is_tty();
// Draws or clears a one-line progress bar on stderr.
void progress_bar(const char* label, int done, int total);
void progress_clear();

}  // namespace dashlm::cli
