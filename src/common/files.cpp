#include "common/files.h"

#include <filesystem>
#include <fstream>

#include "common/error.h"

namespace dashlm {

std::string read_file(const std::string& path, uintmax_t max_bytes, std::string_view what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail("cannot open {}: no such file", path);
  if (!fs::is_regular_file(st)) fail("{} is not a regular file", path);
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) fail("cannot read {}: {}", path, ec.message());
  if (size > max_bytes) fail("{} holds {} bytes, more than the {} bytes {}", path, size, max_bytes, what);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path);
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (in.bad()) fail("cannot read {}", path);
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

}  // namespace dashlm
