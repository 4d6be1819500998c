// Chat prompt formats of instruct models, chosen from tokenizer.chat_template.
#pragma once
#include <string>
#include <string_view>

#include "model/metadata.h"

namespace dashlm {

enum class ChatFormat { None, ChatML, Gemma, Llama3 };

// Recognises the format from the template text in the metadata (or the architecture when the
// template is missing). Returns None when the model has no known chat format.
ChatFormat chat_format_of(const Metadata& meta);
const char* chat_format_name(ChatFormat f);

// A single user turn and the opening of the assistant's turn, with the model's default system
// prompt where its template has one. Control tokens are written as text; encode with
// parse_special = true.
std::string chat_format_user_turn(ChatFormat f, std::string_view user_text, std::string_view system_prompt = "");

// The system prompt the model's template puts in when the conversation has none (SmolLM2:
// "You are a helpful AI assistant named SmolLM, trained by Hugging Face"); empty if none.
std::string chat_default_system_prompt(const Metadata& meta);

}  // namespace dashlm
