// Chat prompt formats. See chat.h.
#include "model/chat.h"

#include <string>

namespace dashlm {

namespace {

bool contains(std::string_view hay, std::string_view needle) { return hay.find(needle) != std::string_view::npos; }

}  // namespace

ChatFormat chat_format_of(const Metadata& meta) {
  if (auto tmpl = meta.get_string("tokenizer.chat_template")) {
    if (contains(*tmpl, "<|im_start|>")) return ChatFormat::ChatML;
    if (contains(*tmpl, "<start_of_turn>")) return ChatFormat::Gemma;
    if (contains(*tmpl, "<|start_header_id|>")) return ChatFormat::Llama3;
  }
  // No (known) template: go by the architecture, then by the vocabulary.
  const std::string arch = meta.get_string("general.architecture").value_or("");
  if (arch == "gemma" || arch == "gemma2" || arch == "gemma3") return ChatFormat::Gemma;
  if (arch == "qwen2") return ChatFormat::ChatML;
  if (auto tokens = meta.get_string_array("tokenizer.ggml.tokens")) {
    bool im_start = false, im_end = false, header = false, eot = false;
    for (const auto& t : *tokens) {
      im_start = im_start || t == "<|im_start|>";
      im_end = im_end || t == "<|im_end|>";
      header = header || t == "<|start_header_id|>";
      eot = eot || t == "<|eot_id|>";
    }
    if (header && eot) return ChatFormat::Llama3;
    if (im_start && im_end) return ChatFormat::ChatML;
  }
  return ChatFormat::None;
}

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::None: return "none";
    case ChatFormat::ChatML: return "chatml";
    case ChatFormat::Gemma: return "gemma";
    case ChatFormat::Llama3: return "llama3";
  }
  return "none";
}

std::string chat_format_user_turn(ChatFormat f, std::string_view user_text, std::string_view system_prompt) {
  std::string s;
  switch (f) {
    case ChatFormat::None:
      s = system_prompt.empty() ? std::string(user_text) : std::string(system_prompt) + "\n\n" + std::string(user_text);
      break;
    case ChatFormat::ChatML:
      if (!system_prompt.empty()) {
        s += "<|im_start|>system\n";
        s += system_prompt;
        s += "<|im_end|>\n";
      }
      s += "<|im_start|>user\n";
      s += user_text;
      s += "<|im_end|>\n<|im_start|>assistant\n";
      break;
    case ChatFormat::Gemma:
      // Gemma has no system role: its template puts the system text at the top of the first
      // user turn. BOS comes from the tokenizer (add_bos), not from the text.
      s += "<start_of_turn>user\n";
      if (!system_prompt.empty()) {
        s += system_prompt;
        s += "\n\n";
      }
      s += user_text;
      s += "<end_of_turn>\n<start_of_turn>model\n";
      break;
    case ChatFormat::Llama3:
      if (!system_prompt.empty()) {
        s += "<|start_header_id|>system<|end_header_id|>\n\n";
        s += system_prompt;
        s += "<|eot_id|>";
      }
      s += "<|start_header_id|>user<|end_header_id|>\n\n";
      s += user_text;
      s += "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
  }
  return s;
}

std::string chat_default_system_prompt(const Metadata& meta) {
  const auto tmpl = meta.get_string("tokenizer.chat_template");
  if (!tmpl) return "";
  // ChatML templates with a built-in system turn write it as a string literal:
  //   '<|im_start|>system\nYou are ...<|im_end|>\n'
  // (the newline either a real one or the two characters \n of a Jinja escape).
  for (std::string_view head : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    size_t at = 0;
    while ((at = tmpl->find(head, at)) != std::string::npos) {
      const size_t b = at + head.size();
      const size_t e = tmpl->find("<|im_end|>", b);
      if (e == std::string::npos) break;
      const std::string_view text = std::string_view(*tmpl).substr(b, e - b);
      // Only a literal counts: no template expressions, no string concatenation, no quotes.
      if (!text.empty() && text.find_first_of("{}'\"") == std::string_view::npos) {
        std::string out;
        for (size_t i = 0; i < text.size(); ++i) {  // unescape \n
          if (text[i] == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
            out += '\n';
            ++i;
          } else {
            out += text[i];
          }
        }
        return out;
      }
      at = b;
    }
  }
  return "";
}

}  // namespace dashlm
