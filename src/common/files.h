// Reading whole input files with a bound: a file the user names (a prompt, a JSON file, a resume
// file) is read only when it is a regular file no larger than what its use allows, checked
// before reading, so that a folder, a device such as /dev/zero or a huge file fails at once.
// Output files: checked before any work starts, and written whole or not at all.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>

namespace dashlm {

// The whole file. Throws Error: "cannot open PATH: no such file", "PATH is not a regular file",
// "PATH holds N bytes, more than the M bytes WHAT" (what: e.g. "a JSON file may hold"), or
// "cannot read PATH".
std::string read_file(const std::string& path, uintmax_t max_bytes = uintmax_t{1} << 30,
                      std::string_view what = "an input file may hold");

// Checks, before any work, that an output file can be created at `path`: not a folder, in a folder
// that exists and is writable, and, when `extensions` are given, named with one of them. Throws
// Error naming `what` (the flag, e.g. "--json"): "--json: cannot write out/x.json: folder out does
// not exist", "--plot: use a .png or .svg file name, got x.jpg".
void check_output_path(const std::string& path, std::string_view what, std::initializer_list<std::string_view> extensions = {});

// Writes `path` so that no half-written file is ever left there: `write` fills a temporary file
// beside it (whose path it is given), which then replaces `path` by a rename. If `write` throws or
// the rename fails, the temporary file is removed and nothing changes at `path`.
void write_file_atomically(const std::string& path, const std::function<void(const std::string& tmp_path)>& write);
// The same for bytes in memory; throws Error "cannot write PATH: REASON".
void write_file_atomically(const std::string& path, std::string_view bytes);

}  // namespace dashlm
