// Chat prompt formats of instruct models, chosen from tokenizer.chat_template.
#pragma once
#include <span>
#include <string>
#include <string_view>

#include "model/metadata.h"

namespace dashlm {

enum class ChatFormat { None, ChatML, Gemma, Llama3 };

// Recognises the format from the template text in the metadata (or the architecture when the
// template is missing). Returns None when the model has no known chat format.
ChatFormat chat_format_of(const Metadata& meta);
const char* chat_format_name(ChatFormat f);

// One message of a conversation: role "system", "user" or "assistant".
struct ChatMessage {
  std::string role, content;
};

// A conversation in the model's format, ending with the opening of the assistant's turn, cut in
// two where the last user message's text begins: `history` (system prompt, earlier turns, the
// last turn's header) and `last_turn` (the last user message and everything after it). With
// halting, the history is what may halt and the last turn runs in full. The model's default
// system prompt goes in when the conversation has no system message. ChatFormat::None (a base
// model) joins the texts with blank lines. Throws Error for an unknown role, for a conversation
// without a user message, and for one whose last message is not the user's.
struct ChatText {
  std::string history, last_turn;
};
ChatText chat_format_conversation(ChatFormat f, std::span<const ChatMessage> messages, std::string_view default_system = "");

// A single user turn and the opening of the assistant's turn, with the model's default system
// prompt where its template has one. Control tokens are written as text; encode with
// parse_special = true.
std::string chat_format_user_turn(ChatFormat f, std::string_view user_text, std::string_view system_prompt = "");

// The system prompt the model's template puts in when the conversation has none (SmolLM2:
// "You are a helpful AI assistant named SmolLM, trained by Hugging Face"); empty if none.
std::string chat_default_system_prompt(const Metadata& meta);

}  // namespace dashlm
