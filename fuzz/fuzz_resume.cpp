// libFuzzer target: the resume file of `dashlm eval --resume`, through read_resume_text (the
// reader dashlm eval runs on the file). It must never throw for the content of a line; every
// record it keeps must have the fields dashlm eval reads, of the types it reads them as, and its
// warning must be one line.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "eval/resume.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const dashlm::eval::ResumeFile f =
      dashlm::eval::read_resume_text(std::string_view(reinterpret_cast<const char*>(data), size));
  int64_t last = 0;
  for (const dashlm::eval::ResumeLine& l : f.records) {
    if (l.line <= last) std::abort();
    last = l.line;
    const nlohmann::json& r = l.record;
    // What dashlm eval does with a record; none of it may throw.
    (void)r.at("task").get<std::string>();
    (void)r.at("config").get<std::string>();
    if (r.at("length").get<int64_t>() <= 0 || r.at("sample").get<int>() < 0) std::abort();
    if (!r.at("settings").is_object()) std::abort();
    for (const char* k : {"document_ms", "full_document_ms", "flops_full", "flops_done"}) (void)r.at(k).get<double>();
    for (const char* k : {"score", "top1_last", "kl_last", "nll", "top1", "kl", "greedy_match", "closed_book_score"}) {
      if (r.contains(k)) (void)r.at(k).get<double>();
    }
    (void)(r.at("settings") == r.at("settings"));
  }
  for (const auto& b : f.bad) {
    if (b.line <= 0 || b.why.empty() || b.why.find('\n') != std::string::npos) std::abort();
  }
  const std::string w = f.warning("fuzz.jsonl");
  if (w.find('\n') != std::string::npos || w.empty() != f.bad.empty()) std::abort();
  return 0;
}
