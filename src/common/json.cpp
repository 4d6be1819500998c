#include "common/json.h"

#include <limits>

#include "common/error.h"
#include "common/files.h"

namespace dashlm {

namespace {

using json = nlohmann::json;

// Thrown by the parser callback to stop at the first container nested too deeply.
struct TooDeep {};

// s on one line, at most max_bytes long: control characters become spaces, bytes that are not
// UTF-8 become '?', and a clipped text ends with "...", never inside a character.
std::string printable(std::string_view s, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(s.size(), max_bytes + 3));
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
    if (!ok) n = 1;
    if (out.size() + n > max_bytes) {
      out += "...";
      return out;
    }
    if (!ok) {
      out += '?';
    } else if (c < 0x20 || c == 0x7f) {
      out += ' ';
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out;
}

// nlohmann's messages start with "[json.exception.parse_error.101] "; the rest is for people.
std::string_view strip_id(std::string_view what) {
  if (what.rfind("[json.exception.", 0) == 0) {
    const size_t end = what.find("] ");
    if (end != std::string_view::npos) what.remove_prefix(end + 2);
  }
  return what;
}

int64_t as_integer(const JsonObject& o, std::string_view key, const json& v) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("{}: key '{}' is {}, out of range", o.where(), key, json_describe(v));
    }
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  o.wrong_type(key, v, "an integer");
}

}  // namespace

json parse_json(std::string_view text, const std::string& where, const JsonKeyHook& on_key) {
  json::parser_callback_t cb = [&on_key](int depth, json::parse_event_t event, json& parsed) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxJsonDepth) {
      throw TooDeep{};
    }
    if (event == json::parse_event_t::key && on_key && parsed.is_string()) {
      on_key(depth, parsed.get_ref<const std::string&>());
    }
    return true;
  };
  try {
    return json::parse(text.data(), text.data() + text.size(), cb);
  } catch (const TooDeep&) {
    fail("{}: nested too deeply (more than {} levels of arrays and objects)", where, kMaxJsonDepth);
  } catch (const json::parse_error& e) {
    std::string_view msg = strip_id(e.what());
    if (msg.rfind("parse error at ", 0) == 0) msg.remove_prefix(15);
    // One line of a JSON-lines file: its line is in `where` already.
    if (text.find('\n') == std::string_view::npos && msg.rfind("line 1, column ", 0) == 0) msg.remove_prefix(8);
    fail("{}: not valid JSON: {}", where, printable(msg, 200));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", where, json_error_text(e));
  }
}

json read_json_file(const std::string& path, uintmax_t max_bytes) {
  return parse_json(read_file(path, max_bytes, "a JSON file may hold"), path);
}

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
      return "a number";
    case json::value_t::binary:
      return "binary data";
    case json::value_t::null:
    case json::value_t::discarded:
      break;
  }
  return "null";
}

std::string json_describe(const json& v, size_t max_chars) {
  switch (v.type()) {
    case json::value_t::object:
      return fmt::format("an object with {} key{}", v.size(), v.size() == 1 ? "" : "s");
    case json::value_t::array:
      return fmt::format("an array of {} element{}", v.size(), v.size() == 1 ? "" : "s");
    case json::value_t::binary:
      return "binary data";
    case json::value_t::string: {
      // Clip before quoting, so that a long string is not copied whole.
      const auto& s = v.get_ref<const std::string&>();
      const json clipped = s.size() > 4 * max_chars ? json(s.substr(0, 4 * max_chars)) : json();
      const std::string quoted = (clipped.is_null() ? v : clipped).dump(-1, ' ', false, json::error_handler_t::replace);
      return fmt::format("a string ({})", printable(quoted, max_chars));
    }
    case json::value_t::boolean:
      return v.get<bool>() ? "true" : "false";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float:
      return fmt::format("a number ({})", printable(v.dump(), max_chars));
    case json::value_t::null:
    case json::value_t::discarded:
      break;
  }
  return "null";
}

std::string json_error_text(const std::exception& e) { return printable(strip_id(e.what()), 200); }

// --- JsonObject ---------------------------------------------------------------------

JsonObject::JsonObject(const json& v, std::string where) : v_(&v), where_(std::move(where)) {
  if (!v.is_object()) fail("{}: expected an object, found {}", where_, json_describe(v));
}

const json* JsonObject::find(std::string_view key) const {
  const auto it = v_->find(key);
  if (it == v_->end() || it->is_null()) return nullptr;
  return &*it;
}

void JsonObject::wrong_type(std::string_view key, const json& v, const char* expected) const {
  fail("{}: key '{}' is {}, expected {}", where_, printable(key, 60), json_describe(v), expected);
}

const json& JsonObject::at(std::string_view key) const {
  const json* v = find(key);
  if (!v) fail("{}: key '{}' is missing", where_, printable(key, 60));
  return *v;
}

std::string JsonObject::string(std::string_view key) const {
  const json& v = at(key);
  if (!v.is_string()) wrong_type(key, v, "a string");
  return v.get<std::string>();
}

int64_t JsonObject::integer(std::string_view key) const { return as_integer(*this, key, at(key)); }

double JsonObject::number(std::string_view key) const {
  const json& v = at(key);
  if (!v.is_number()) wrong_type(key, v, "a number");
  return v.get<double>();
}

bool JsonObject::boolean(std::string_view key) const {
  const json& v = at(key);
  if (!v.is_boolean()) wrong_type(key, v, "true or false");
  return v.get<bool>();
}

const json& JsonObject::array(std::string_view key) const {
  const json& v = at(key);
  if (!v.is_array()) wrong_type(key, v, "an array");
  return v;
}

JsonObject JsonObject::object(std::string_view key) const {
  const json& v = at(key);
  if (!v.is_object()) wrong_type(key, v, "an object");
  return JsonObject(v, fmt::format("{}: {}", where_, printable(key, 60)));
}

std::string JsonObject::string_or(std::string_view key, const std::string& def) const {
  return has(key) ? string(key) : def;
}

int64_t JsonObject::integer_or(std::string_view key, int64_t def) const { return has(key) ? integer(key) : def; }

double JsonObject::number_or(std::string_view key, double def) const { return has(key) ? number(key) : def; }

bool JsonObject::boolean_or(std::string_view key, bool def) const { return has(key) ? boolean(key) : def; }

}  // namespace dashlm
