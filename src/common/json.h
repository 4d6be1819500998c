// JSON that comes from files (config.json, tokenizer.json, safetensors headers, datasets, resume
// and calibration files): parsing with a bound on nesting, short descriptions of values for
// messages, and typed access whose errors name the file, the line and the key.
//
// Every message is a dashlm::Error of one line; nlohmann's own messages ("[json.exception...]")
// never reach the user, and nothing here recurses over a value (nlohmann's dump() and copies
// do, so a value nested a million levels deep would overflow the stack).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace dashlm {

// Arrays and objects nested deeper than this are rejected while parsing. Real files nest a few
// levels (tokenizer.json: 5).
constexpr int kMaxJsonDepth = 64;
// read_json_file refuses larger files (tokenizer.json of the largest vocabularies is a few tens of MB).
constexpr uintmax_t kMaxJsonFileBytes = uintmax_t{512} << 20;

// Called for every object key while parsing; depth 1 is a key of the top-level object.
using JsonKeyHook = std::function<void(int depth, const std::string& key)>;

// Parses text as one JSON value. `where` names the text in messages (a path, "PATH line 17").
// Throws Error: "WHERE: not valid JSON: line 1, column 2: syntax error ..." or
// "WHERE: nested too deeply (more than 64 levels of arrays and objects)".
nlohmann::json parse_json(std::string_view text, const std::string& where, const JsonKeyHook& on_key = {});

// Reads a whole file and parses it with parse_json (the path names it in messages).
nlohmann::json read_json_file(const std::string& path, uintmax_t max_bytes = kMaxJsonFileBytes);

// "an object", "an array", "a string", "a number", "a boolean", "null", "binary data".
const char* json_type_name(const nlohmann::json& v);

// A short description of a value for messages, never longer than about max_chars: the type,
// and for scalars the value, clipped: `a string ("abc")`, `a number (3.5)`, `true`, `null`,
// `an array of 3 elements`, `an object with 2 keys`. Does not look inside arrays and objects.
std::string json_describe(const nlohmann::json& v, size_t max_chars = 40);

// The text of a nlohmann exception without its "[json.exception.type_error.302] " prefix, on
// one line and clipped: for the rare message that must mention what the library found.
std::string json_error_text(const std::exception& e);

// Typed access to the members of one JSON object. `where` says where the object came from
// ("eval.jsonl line 17", "manifest.json: books[2]"); every error names it and the key:
//   "eval.jsonl line 17: key 'score' is a string ("x"), expected a number".
// A member that is null counts as absent.
class JsonObject {
 public:
  // Fails unless v is an object: "WHERE: expected an object, found an array of 3 elements".
  JsonObject(const nlohmann::json& v, std::string where);

  const nlohmann::json& value() const { return *v_; }
  const std::string& where() const { return where_; }
  // The member, or nullptr when it is absent or null.
  const nlohmann::json* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

  // Required members: fail when absent ("WHERE: key 'k' is missing") or of another type.
  const nlohmann::json& at(std::string_view key) const;
  std::string string(std::string_view key) const;
  int64_t integer(std::string_view key) const;
  double number(std::string_view key) const;
  bool boolean(std::string_view key) const;
  const nlohmann::json& array(std::string_view key) const;
  JsonObject object(std::string_view key) const;

  // Optional members: the default when absent or null, an error when of another type.
  std::string string_or(std::string_view key, const std::string& def) const;
  int64_t integer_or(std::string_view key, int64_t def) const;
  double number_or(std::string_view key, double def) const;
  bool boolean_or(std::string_view key, bool def) const;

  // "WHERE: key 'k' is DESCRIPTION, expected WHAT".
  [[noreturn]] void wrong_type(std::string_view key, const nlohmann::json& v, const char* expected) const;

 private:
  const nlohmann::json* v_;
  std::string where_;
};

}  // namespace dashlm
