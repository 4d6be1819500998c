#include "eval/resume.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>

#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"
#include "common/json.h"

namespace dashlm::eval {

namespace {

using json = nlohmann::json;

// Numbers every record carries, and those that only some tasks have.
constexpr const char* kNumbers[] = {"document_ms", "full_document_ms", "flops_full", "flops_done"};
constexpr const char* kOptionalNumbers[] = {"score",     "top1_last", "kl_last",          "nll", "top1",
                                            "kl",        "greedy_match", "closed_book_score", "flop_speedup",
                                            "query_ms"};

// A number, or null for a NaN or infinity that the JSON writer wrote as null: becomes NaN.
void check_number(json& r, const JsonObject& o, const char* key, bool required) {
  const auto it = r.find(key);
  if (it == r.end()) {
    if (required) fail("{}: key '{}' is missing", o.where(), key);
    return;
  }
  if (it->is_null()) {
    *it = std::nan("");
  } else if (!it->is_number()) {
    o.wrong_type(key, *it, "a number");
  }
}

}  // namespace

json parse_resume_line(std::string_view line, const std::string& where) {
  json r = parse_json(line, where);
  const JsonObject o(r, where);
  (void)o.string("task");
  (void)o.string("config");
  const int64_t length = o.integer("length");
  if (length <= 0) fail("{}: key 'length' is {}, expected a positive integer", where, length);
  const int64_t sample = o.integer("sample");
  if (sample < 0 || sample > INT_MAX) fail("{}: key 'sample' is {}, out of range", where, sample);
  (void)o.object("settings");
  for (const char* k : kNumbers) check_number(r, o, k, true);
  for (const char* k : kOptionalNumbers) check_number(r, o, k, false);
  return r;
}

std::string ResumeFile::warning(const std::string& name) const {
  if (bad.empty()) return "";
  constexpr size_t kShown = 3;
  std::string why;
  for (size_t i = 0; i < bad.size() && i < kShown; ++i) why += fmt::format("{}{}", i ? "; " : "", bad[i].why);
  if (bad.size() > kShown) why += fmt::format("; and {} more", bad.size() - kShown);
  return fmt::format("resume: skipped {} unreadable line{} of {} ({})", bad.size(), bad.size() == 1 ? "" : "s", name,
                     why);
}

ResumeFile read_resume_text(std::string_view text) {
  ResumeFile f;
  int64_t n = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();  // the last line, maybe cut off
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++n;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    const std::string where = fmt::format("line {}", n);
    try {
      f.records.push_back({n, parse_resume_line(line, where)});
    } catch (const Error& e) {
      f.bad.push_back({n, e.what()});
    }
  }
  return f;
}

ResumeFile read_resume_file(const std::string& path) {
  return read_resume_text(read_file(path));
}

// --- writer ---------------------------------------------------------------------------

ResumeWriter::ResumeWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot write {}: {}", path, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) == 0 && st.st_size > 0) {
    char last = 0;
    const ssize_t got = ::pread(fd_, &last, 1, st.st_size - 1);
    if (got == 1 && last != '\n') write_all("\n");  // end the line an interrupted write cut off
  }
}

ResumeWriter::~ResumeWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void ResumeWriter::write_all(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("cannot write {}: {}", path_, n < 0 ? std::strerror(errno) : "nothing written");
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

void ResumeWriter::append(const json& record) {
  std::string line = record.dump(-1, ' ', false, json::error_handler_t::replace);
  line += '\n';
  write_all(line);
}

}  // namespace dashlm::eval
