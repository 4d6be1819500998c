#include "common/files.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
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

void check_output_path(const std::string& path, std::string_view what, std::initializer_list<std::string_view> extensions) {
  namespace fs = std::filesystem;
  if (path.empty()) fail("{}: no file name given", what);
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) fail("{}: cannot write {}: it is a folder", what, path);
  if (extensions.size() > 0) {
    bool named = false;
    std::string names;
    for (std::string_view e : extensions) {
      named = named || (path.size() > e.size() && path.compare(path.size() - e.size(), e.size(), e) == 0);
      names += (names.empty() ? "" : extensions.size() > 1 && e == *(extensions.end() - 1) ? " or " : ", ") + std::string(e);
    }
    if (!named) fail("{}: use a {} file name, got {}", what, names, path);
  }
  if (fs::exists(p, ec) && !fs::is_regular_file(p, ec)) fail("{}: cannot write {}: it exists and is not a regular file", what, path);
  if (fs::exists(p, ec) && ::access(path.c_str(), W_OK) != 0) fail("{}: cannot write {}: it is not writable", what, path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::exists(dir, ec)) fail("{}: cannot write {}: folder {} does not exist", what, path, dir.string());
  if (!fs::is_directory(dir, ec)) fail("{}: cannot write {}: {} is not a folder", what, path, dir.string());
  // The file is written beside itself and renamed into place, so the folder must be writable.
  if (::access(dir.c_str(), W_OK | X_OK) != 0) fail("{}: cannot write {}: folder {} is not writable", what, path, dir.string());
}

void write_file_atomically(const std::string& path, const std::function<void(const std::string& tmp_path)>& write) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const std::string tmp = (p.has_parent_path() ? p.parent_path() / "" : fs::path()).string() + "." +
                          p.filename().string() + ".tmp" + std::to_string(::getpid());
  std::error_code ec;
  try {
    write(tmp);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  fs::rename(tmp, p, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    fail("cannot write {}: {}", path, ec.message());
  }
}

void write_file_atomically(const std::string& path, std::string_view bytes) {
  write_file_atomically(path, [&](const std::string& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write {}: {}", path, std::strerror(errno));
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) fail("cannot write {}: {}", path, std::strerror(errno));
  });
}

}  // namespace dashlm
