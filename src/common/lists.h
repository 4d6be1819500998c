// Parsing of the comma-separated lists that commands take.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dashlm {

// Splits at a separator, dropping empty items and surrounding spaces.
std::vector<std::string> split_list(const std::string& s, char sep = ',');
// "1024,4k,0.5k" -> token counts (k = 1024); what: the option, for the error message.
std::vector<int64_t> parse_lengths(const std::string& s, const std::string& what = "");

}  // namespace dashlm
