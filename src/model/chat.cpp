// Chat prompt formats. See chat.h.
#include "model/chat.h"

#include <algorithm>
#include <string>

#include "common/error.h"

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

namespace {

// The text of one turn before and after its content, in format f.
struct TurnFrame {
  std::string open, close;
};

TurnFrame turn_frame(ChatFormat f, const std::string& role) {
  switch (f) {
    case ChatFormat::None: return {"", ""};
    case ChatFormat::ChatML: return {"<|im_start|>" + role + "\n", "<|im_end|>\n"};
    case ChatFormat::Gemma:
      // Gemma's roles are user and model; it has no system role (see below).
      return {"<start_of_turn>" + std::string(role == "assistant" ? "model" : role) + "\n", "<end_of_turn>\n"};
    case ChatFormat::Llama3: return {"<|start_header_id|>" + role + "<|end_header_id|>\n\n", "<|eot_id|>"};
  }
  return {"", ""};
}

std::string assistant_opening(ChatFormat f) { return f == ChatFormat::None ? "" : turn_frame(f, "assistant").open; }

}  // namespace

ChatText chat_format_conversation(ChatFormat f, std::span<const ChatMessage> messages, std::string_view default_system) {
  size_t last_user = messages.size();
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    if (r != "system" && r != "user" && r != "assistant") fail("unknown message role '{}' (system, user or assistant)", r);
    if (r == "user") last_user = i;
  }
  if (last_user == messages.size()) fail("the conversation has no user message");
  if (last_user + 1 != messages.size()) fail("the last message must be the user's");

  // The system text: the conversation's system messages, else the model's default.
  std::string system;
  for (const ChatMessage& m : messages) {
    if (m.role != "system") continue;
    if (!system.empty()) system += "\n\n";
    system += m.content;
  }
  const bool has_system = std::any_of(messages.begin(), messages.end(), [](const ChatMessage& m) { return m.role == "system"; });
  if (!has_system) system = std::string(default_system);

  ChatText out;
  std::string* dst = &out.history;
  bool first_user = true;
  bool first_text = true;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == "system") continue;
    std::string content = m.content;
    // Gemma has no system role: its template puts the system text at the top of the first user
    // turn; a base model gets it as the first paragraph.
    if (first_user && m.role == "user" && !system.empty() && f == ChatFormat::Gemma) content = system + "\n\n" + content;
    if (f == ChatFormat::None) {
      if (first_text && !system.empty()) *dst += system + "\n\n";
      if (!first_text) *dst += "\n\n";
      if (i == last_user) dst = &out.last_turn;
      *dst += content;
    } else {
      if (first_text && !system.empty() && f != ChatFormat::Gemma) {
        const TurnFrame sf = turn_frame(f, "system");
        *dst += sf.open + system + sf.close;
      }
      const TurnFrame tf = turn_frame(f, m.role);
      *dst += tf.open;
      if (i == last_user) dst = &out.last_turn;
      *dst += content + tf.close;
    }
    if (m.role == "user") first_user = false;
    first_text = false;
  }
  out.last_turn += assistant_opening(f);
  return out;
}

std::string chat_format_user_turn(ChatFormat f, std::string_view user_text, std::string_view system_prompt) {
  const ChatMessage m[] = {{"user", std::string(user_text)}};
  const ChatText t = chat_format_conversation(f, m, system_prompt);
  return t.history + t.last_turn;
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
