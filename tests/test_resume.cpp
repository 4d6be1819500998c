// The resume file of dashlm eval: the line parser checks every field that eval reads; a cut-off
// last line (a run killed mid-write) loses no record when the run is resumed; garbage lines are
// skipped with one warning that counts them and names their lines.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "eval/resume.h"
#include "test_util.h"

namespace dashlm {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::TempDir;

std::string nested(size_t depth) { return std::string(depth, '[') + "1" + std::string(depth, ']'); }

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// fn must throw a dashlm::Error containing part, on one line, without nlohmann's tag.
void expect_error(const std::function<void()>& fn, const std::string& part) {
  try {
    fn();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.find("json.exception"), std::string::npos) << msg;
  }
}

json record(const std::string& task, int sample, const std::string& config) {
  return {{"task", task},       {"length", 256},           {"sample", sample},     {"config", config},
          {"settings", {{"seed", 0}}}, {"document_ms", 1.5}, {"full_document_ms", 2.0}, {"flops_full", 10.0},
          {"flops_done", 5.0},  {"score", 1.0},            {"kl_last", 0.01}};
}

TEST(Resume, LineParserChecksEveryFieldItUses) {
  const json r = record("needle", 0, "full");
  EXPECT_EQ(eval::parse_resume_line(r.dump(), "line 1"), r);
  auto with = [&](const char* key, const json& v) {
    json x = r;
    x[key] = v;
    return x.dump();
  };
  expect_error([&] { eval::parse_resume_line(with("score", "high"), "line 17"); },
               "line 17: key 'score' is a string (\"high\"), expected a number");
  expect_error([&] { eval::parse_resume_line(with("length", "256"), "line 3"); }, "line 3: key 'length' is a string");
  expect_error([&] { eval::parse_resume_line(with("length", -4), "line 3"); }, "line 3: key 'length' is -4");
  expect_error([&] { eval::parse_resume_line(with("sample", 1e300), "line 3"); }, "key 'sample' is a number");
  expect_error([&] { eval::parse_resume_line(with("settings", 1), "line 3"); }, "key 'settings' is a number (1), expected an object");
  json no_task = r;
  no_task.erase("task");
  expect_error([&] { eval::parse_resume_line(no_task.dump(), "line 4"); }, "line 4: key 'task' is missing");
  expect_error([&] { eval::parse_resume_line(nested(100000), "line 5"); }, "line 5: nested too deeply");
  expect_error([&] { eval::parse_resume_line("[1, 2]", "line 6"); }, "line 6: expected an object, found an array of 2 elements");
  expect_error([&] { eval::parse_resume_line(r.dump().substr(0, 40), "line 7"); }, "line 7: not valid JSON: column 41");
  // NaN and infinity, which the JSON writer writes as null, come back as NaN.
  json nan = r;
  nan["kl_last"] = std::nan("");
  const json back = eval::parse_resume_line(nan.dump(), "line 8");
  EXPECT_TRUE(std::isnan(back["kl_last"].get<double>()));
}

TEST(Resume, CutOffLastLineLosesNothingWhenResumed) {
  TempDir d("json_resume_cut");
  const fs::path p = d.path / "r.jsonl";
  {
    eval::ResumeWriter w(p.string());
    w.append(record("needle", 0, "full"));
    w.append(record("needle", 0, "topk"));
  }
  // The process was killed in the middle of the third record: no '\n' at the end.
  const std::string third = record("needle", 1, "full").dump();
  {
    std::ofstream(p, std::ios::app | std::ios::binary) << third.substr(0, third.size() / 2);
  }
  // The resumed run reads what is there (the cut line counts as skipped)...
  eval::ResumeFile before = eval::read_resume_file(p.string());
  ASSERT_EQ(before.records.size(), 2u);
  ASSERT_EQ(before.bad.size(), 1u);
  EXPECT_EQ(before.bad[0].line, 3);
  // ...and appends the record again and the ones after it.
  {
    eval::ResumeWriter w(p.string());
    w.append(record("needle", 1, "full"));
    w.append(record("needle", 1, "topk"));
  }
  const eval::ResumeFile after = eval::read_resume_file(p.string());
  ASSERT_EQ(after.records.size(), 4u) << read_text(p);
  EXPECT_EQ(after.records[2].record, record("needle", 1, "full"));
  EXPECT_EQ(after.records[3].record, record("needle", 1, "topk"));
  EXPECT_EQ(after.records[2].line, 4);  // the cut line stays where it was, alone
  ASSERT_EQ(after.bad.size(), 1u);
  EXPECT_EQ(after.bad[0].line, 3);
  const std::string text = read_text(p);
  EXPECT_EQ(text.back(), '\n');
  // A file that does end with '\n' gets nothing extra.
  {
    eval::ResumeWriter w(p.string());
  }
  EXPECT_EQ(read_text(p), text);
}

TEST(Resume, GarbageLinesAreSkippedWithOneWarning) {
  const std::string a = record("needle", 0, "full").dump(), b = record("needle", 0, "topk").dump();
  json wrong = record("needle", 1, "full");
  wrong["score"] = "high";
  const std::string text = a + "\n" + "garbage {\n" + "\n" + b + "\r\n" + wrong.dump() + "\n" + nested(100000) + "\n" +
                           "[1]\n" + a.substr(0, 10) + "\n" + "{}\n";
  const eval::ResumeFile f = eval::read_resume_text(text);
  ASSERT_EQ(f.records.size(), 2u);
  EXPECT_EQ(f.records[0].line, 1);
  EXPECT_EQ(f.records[1].line, 4);
  std::vector<int64_t> lines;
  for (const auto& x : f.bad) lines.push_back(x.line);
  EXPECT_EQ(lines, (std::vector<int64_t>{2, 5, 6, 7, 8, 9}));
  const std::string w = f.warning("r.jsonl");
  EXPECT_EQ(w.find('\n'), std::string::npos) << w;
  EXPECT_EQ(w.find("json.exception"), std::string::npos) << w;
  EXPECT_EQ(w.rfind("resume: skipped 6 unreadable lines of r.jsonl (line 2: not valid JSON", 0), 0u) << w;
  EXPECT_NE(w.find("line 5: key 'score' is a string (\"high\"), expected a number"), std::string::npos) << w;
  EXPECT_NE(w.find("line 6: nested too deeply"), std::string::npos) << w;
  EXPECT_NE(w.find("and 3 more"), std::string::npos) << w;
  EXPECT_EQ(eval::read_resume_text(a + "\n").warning("r.jsonl"), "");
}

}  // namespace
}  // namespace dashlm
