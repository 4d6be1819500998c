// The resume file of `dashlm eval --resume FILE`: one JSON object per line, one line per finished
// run, appended as runs finish so that an interrupted evaluation continues where it stopped.
//
// The writer never loses a record to an interrupted write: each record is one write() of one
// line, and a file whose last line was cut off (no '\n') gets its '\n' before the next record,
// so that record is not glued onto the broken line. The reader skips lines it cannot use (a cut
// line, garbage, a record of the wrong shape) and reports them, with their line numbers.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace dashlm::eval {

// Parses and checks one line of a resume file; `where` names it in messages ("line 17").
// A record has task and config (strings), length (> 0) and sample (>= 0) (integers), settings
// (an object), the timings and FLOP counts, and each metric it has, as numbers; null numbers
// (NaN and infinity as the JSON writer writes them) come back as NaN. Throws Error, e.g.
// "line 17: key 'score' is a string ("x"), expected a number".
nlohmann::json parse_resume_line(std::string_view line, const std::string& where);

struct ResumeLine {
  int64_t line;  // 1-based
  nlohmann::json record;
};

struct ResumeFile {
  std::vector<ResumeLine> records;  // the usable lines, in file order
  struct Bad {
    int64_t line;
    std::string why;
  };
  std::vector<Bad> bad;  // the lines skipped, with the reason
  // One line for stderr when lines were skipped: how many, which and why (the first few).
  // Empty when none were.
  std::string warning(const std::string& name) const;
};

// Reads every line of a resume file's text (blank lines are ignored); never throws for the
// content of a line.
ResumeFile read_resume_text(std::string_view text);
// Same, from the file (Error when it cannot be read).
ResumeFile read_resume_file(const std::string& path);

// Appends records to a resume file.
class ResumeWriter {
 public:
  // Opens (creating) path for appending; if its last line lacks its '\n', writes that first.
  explicit ResumeWriter(const std::string& path);
  ~ResumeWriter();
  ResumeWriter(const ResumeWriter&) = delete;
  ResumeWriter& operator=(const ResumeWriter&) = delete;

  // The record as one line ending in '\n', handed to the OS in one write (nothing stays buffered
  // in the process). Throws Error when the write fails.
  void append(const nlohmann::json& record);

 private:
  void write_all(std::string_view bytes);
  int fd_ = -1;
  std::string path_;
};

}  // namespace dashlm::eval
