// dashlm tokenize: text -> token ids with a model's tokenizer (no weights are loaded).
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "frontends/cli/commands.h"
#include "model/model_file.h"
#include "model/tokenizer.h"

namespace dashlm::cli {

namespace {

struct TokenizeOptions {
  std::string model, tokenizer, prompt, file;
  bool no_bos = false;
  bool no_special = false;
  bool ids = false;
  bool json = false;
};

// A piece shown on one line: control characters, backslashes and bytes that are not UTF-8
// are escaped.
std::string printable_piece(const std::string& s) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c == '\n') { out += "\\n"; ++i; continue; }
    if (c == '\t') { out += "\\t"; ++i; continue; }
    if (c == '\r') { out += "\\r"; ++i; continue; }
    if (c == '\\') { out += "\\\\"; ++i; continue; }
    if (c < 0x20 || c == 0x7F) { out += fmt::format("\\x{:02x}", c); ++i; continue; }
    if (c < 0x80) { out += static_cast<char>(c); ++i; continue; }
    size_t len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    bool ok = len > 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xC0) == 0x80;
    if (!ok) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
      continue;
    }
    out.append(s, i, len);
    i += len;
  }
  return out;
}

int run_tokenize(const TokenizeOptions& o) {
  std::string text;
  if (!o.file.empty()) {
    text = read_file(o.file);
  } else {
    text = o.prompt;
  }
  if (text.empty()) fail("nothing to tokenize: the text is empty");

  const auto file = open_model_file(o.model, o.tokenizer);
  const auto tok = Tokenizer::from_metadata(file->meta);
  // BOS (and EOS, for the rare vocabularies that ask for it) as llama.cpp's add_special does.
  const bool add_special = !o.no_bos;
  std::vector<int32_t> ids = tok->encode(text, add_special && tok->add_bos_default(), !o.no_special);
  if (add_special && tok->add_eos_default() && tok->eos() >= 0) ids.push_back(tok->eos());

  if (o.json) {
    const nlohmann::ordered_json j = {{"n_tokens", ids.size()}, {"ids", ids}};
    fmt::print("{}\n", j.dump());
  } else if (o.ids) {
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i) line += ' ';
      line += std::to_string(ids[i]);
    }
    fmt::print("{}\n", line);
  } else {
    for (int32_t id : ids) fmt::print("{}\t{}\n", id, printable_piece(tok->token_to_piece(id)));
  }
  return 0;
}

}  // namespace

void add_tokenize_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Show the token ids of a text (loads only the tokenizer)");
  cmd->add_option("-m,--model", o->model, "Model file (GGUF, safetensors, llama2.c)")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "Tokenizer file (llama2.c tokenizer.bin, tokenizer.json, GGUF)");
  auto* prompt = cmd->add_option("-p,--prompt", o->prompt, "Text to tokenize");
  auto* file = cmd->add_option("-f,--file", o->file, "Read the text from a file");
  prompt->excludes(file);
  file->excludes(prompt);
  cmd->add_flag("--no-bos", o->no_bos, "Do not add BOS (nor EOS) even if the model asks for it");
  cmd->add_flag("--no-special", o->no_special, "Spell out special-token text instead of matching control tokens");
  auto* ids = cmd->add_flag("--ids", o->ids, "Print only the ids, space separated");
  auto* json = cmd->add_flag("--json", o->json, R"(Print {"n_tokens": N, "ids": [...]})");
  ids->excludes(json);
  json->excludes(ids);
  cmd->callback([o, prompt, file, &action] {
    // Checked here rather than with CLI11's require_option so that -p "" reports empty text.
    const bool has_text = prompt->count() > 0 || file->count() > 0;
    action = [o, has_text]() -> int {
      if (!has_text) fail("tokenize: give the text with -p TEXT or -f FILE");
      return run_tokenize(*o);
    };
  });
}

}  // namespace dashlm::cli
