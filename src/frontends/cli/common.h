// Helpers shared by the CLI subcommands.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dashlm::cli {

// Whole file as bytes; one-line error if it cannot be read, is not a regular file (a folder, a
// device such as /dev/zero, a pipe) or holds more than max_bytes (checked before reading, so a
// huge file is refused at once).
std::string read_text_file(const std::string& path, size_t max_bytes = size_t{1} << 30);
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
