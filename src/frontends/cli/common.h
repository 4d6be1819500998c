// Helpers shared by the CLI subcommands.
#pragma once
#include <string>

namespace dashlm::cli {

// Whole file as bytes; one-line error if it cannot be read.
std::string read_text_file(const std::string& path);
// True when stderr is a terminal (progress bars are drawn only then).
bool stderr_is_tty();
// Draws or clears a one-line progress bar on stderr.
void progress_bar(const char* label, int done, int total);
void progress_clear();

}  // namespace dashlm::cli
