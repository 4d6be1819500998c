// Reading whole input files with a bound: a file the user names (a prompt, a JSON file, a resume
// file) is read only when it is a regular file no larger than what its use allows, checked
// before reading, so that a folder, a device such as /dev/zero or a huge file fails at once.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dashlm {

// The whole file. Throws Error: "cannot open PATH: no such file", "PATH is not a regular file",
// "PATH holds N bytes, more than the M bytes WHAT" (what: e.g. "a JSON file may hold"), or
// "cannot read PATH".
std::string read_file(const std::string& path, uintmax_t max_bytes = uintmax_t{1} << 30,
                      std::string_view what = "an input file may hold");

}  // namespace dashlm
