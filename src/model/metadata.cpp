// Metadata values and the key -> value map shared by every model file format.
#include "model/metadata.h"

#include <algorithm>
#include <limits>

#include "common/error.h"

namespace dashlm {

const char* meta_type_name(MetaType t) {
  switch (t) {
    case MetaType::U8:
      return "u8";
    case MetaType::I8:
      return "i8";
    case MetaType::U16:
      return "u16";
    case MetaType::I16:
      return "i16";
    case MetaType::U32:
      return "u32";
    case MetaType::I32:
      return "i32";
    case MetaType::F32:
      return "f32";
    case MetaType::BOOL:
      return "bool";
    case MetaType::STRING:
      return "string";
    case MetaType::ARRAY:
      return "array";
    case MetaType::U64:
      return "u64";
    case MetaType::I64:
      return "i64";
    case MetaType::F64:
      return "f64";
  }
  return "unknown";
}

// --- MetaValue ---------------------------------------------------------------

MetaValue MetaValue::of_int(int64_t x, MetaType t) {
  MetaValue m;
  m.type = t;
  m.v = x;
  return m;
}

MetaValue MetaValue::of_uint(uint64_t x, MetaType t) {
  MetaValue m;
  m.type = t;
  m.v = x;
  return m;
}

MetaValue MetaValue::of_float(double x, MetaType t) {
  MetaValue m;
  m.type = t;
  m.v = x;
  return m;
}

MetaValue MetaValue::of_bool(bool x) {
  MetaValue m;
  m.type = MetaType::BOOL;
  m.v = x;
  return m;
}

MetaValue MetaValue::of_string(std::string s) {
  MetaValue m;
  m.type = MetaType::STRING;
  m.v = std::move(s);
  return m;
}

MetaValue MetaValue::of_array(MetaType elem, MetaArray a) {
  MetaValue m;
  m.type = MetaType::ARRAY;
  m.elem_type = elem;
  m.v = std::make_shared<MetaArray>(std::move(a));
  return m;
}

const MetaArray& MetaValue::array() const {
  const auto* p = std::get_if<std::shared_ptr<MetaArray>>(&v);
  if (!p || !*p) fail("metadata value of type {} is not an array", meta_type_name(type));
  return **p;
}

std::optional<int64_t> MetaValue::as_int() const {
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&v)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(*u);
  }
  if (const auto* b = std::get_if<bool>(&v)) return *b ? 1 : 0;
  return std::nullopt;
}

std::optional<double> MetaValue::as_float() const {
  if (const auto* d = std::get_if<double>(&v)) return *d;
  if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  if (const auto* u = std::get_if<uint64_t>(&v)) return static_cast<double>(*u);
  return std::nullopt;
}

std::optional<bool> MetaValue::as_bool() const {
  if (const auto* b = std::get_if<bool>(&v)) return *b;
  if (const auto* i = std::get_if<int64_t>(&v)) return *i != 0;
  if (const auto* u = std::get_if<uint64_t>(&v)) return *u != 0;
  return std::nullopt;
}

const std::string* MetaValue::as_string() const { return std::get_if<std::string>(&v); }

namespace {

// Printable form of a string: control characters escaped, long strings shortened.
std::string display_string(const std::string& s, size_t max_bytes) {
  std::string out;
  const size_t n = std::min(s.size(), max_bytes);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += fmt::format("\\x{:02x}", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  if (n < s.size()) out += fmt::format("... ({} bytes)", s.size());
  return out;
}

std::string display_value(const MetaValue& m, size_t max_items, bool in_array) {
  if (m.is_array()) {
    const MetaArray& a = m.array();
    std::string out = "[";
    const size_t n = std::min(a.size(), max_items);
    for (size_t i = 0; i < n; ++i) {
      if (i) out += ", ";
      out += display_value(a[i], max_items, true);
    }
    if (n < a.size()) out += fmt::format(", ... ({} items)", a.size());
    return out + "]";
  }
  if (const auto* s = m.as_string()) {
    if (!in_array) return display_string(*s, 160);
    std::string out = "\"";
    out += display_string(*s, 64);
    out += '"';
    return out;
  }
  if (const auto* b = std::get_if<bool>(&m.v)) return *b ? "true" : "false";
  if (const auto* d = std::get_if<double>(&m.v)) {
    // F32 values print at float precision (1e-05, not 9.999999747378752e-06).
    if (m.type == MetaType::F32) return fmt::format("{}", static_cast<float>(*d));
    return fmt::format("{}", *d);
  }
  if (const auto* i = std::get_if<int64_t>(&m.v)) return fmt::format("{}", *i);
  if (const auto* u = std::get_if<uint64_t>(&m.v)) return fmt::format("{}", *u);
  return "?";
}

}  // namespace

std::string MetaValue::to_display(size_t max_items) const { return display_value(*this, max_items, false); }

// --- Metadata ----------------------------------------------------------------

const MetaValue* Metadata::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

bool Metadata::erase(const std::string& key) { return kv_.erase(key) != 0; }

size_t Metadata::erase_prefix(const std::string& prefix) {
  size_t n = 0;
  for (auto it = kv_.lower_bound(prefix); it != kv_.end() && it->first.compare(0, prefix.size(), prefix) == 0;) {
    it = kv_.erase(it);
    ++n;
  }
  return n;
}

namespace {

[[noreturn]] void wrong_type(const std::string& key, const MetaValue& v, const char* wanted) {
  if (v.is_array()) {
    fail("metadata {} is an array of {}, expected {}", key, meta_type_name(v.elem_type), wanted);
  }
  fail("metadata {} has type {}, expected {}", key, meta_type_name(v.type), wanted);
}

bool is_integer_type(MetaType t) {
  switch (t) {
    case MetaType::U8:
    case MetaType::I8:
    case MetaType::U16:
    case MetaType::I16:
    case MetaType::U32:
    case MetaType::I32:
    case MetaType::U64:
    case MetaType::I64:
      return true;
    default:
      return false;
  }
}

bool is_number_type(MetaType t) { return is_integer_type(t) || t == MetaType::F32 || t == MetaType::F64; }

}  // namespace

std::optional<int64_t> Metadata::get_int(const std::string& key) const {
  const MetaValue* v = find(key);
  if (!v) return std::nullopt;
  if (!is_integer_type(v->type) && v->type != MetaType::BOOL) wrong_type(key, *v, "an integer");
  auto i = v->as_int();
  if (!i) fail("metadata {} = {} does not fit in a signed 64-bit integer", key, v->to_display());
  return i;
}

std::optional<double> Metadata::get_float(const std::string& key) const {
  const MetaValue* v = find(key);
  if (!v) return std::nullopt;
  if (!is_number_type(v->type)) wrong_type(key, *v, "a number");
  return v->as_float();
}

std::optional<bool> Metadata::get_bool(const std::string& key) const {
  const MetaValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->type != MetaType::BOOL && !is_integer_type(v->type)) wrong_type(key, *v, "a bool");
  return v->as_bool();
}

std::optional<std::string> Metadata::get_string(const std::string& key) const {
  const MetaValue* v = find(key);
  if (!v) return std::nullopt;
  const std::string* s = v->as_string();
  if (!s) wrong_type(key, *v, "a string");
  return *s;
}

std::optional<std::vector<std::string>> Metadata::get_string_array(const std::string& key) const {
  const MetaValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array() || v->elem_type != MetaType::STRING) wrong_type(key, *v, "an array of strings");
  std::vector<std::string> out;
  out.reserve(v->array().size());
  for (const MetaValue& e : v->array()) {
    const std::string* s = e.as_string();
    if (!s) wrong_type(key, *v, "an array of strings");
    out.push_back(*s);
  }
  return out;
}

std::optional<std::vector<double>> Metadata::get_float_array(const std::string& key) const {
  const MetaValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array() || !is_number_type(v->elem_type)) wrong_type(key, *v, "an array of numbers");
  std::vector<double> out;
  out.reserve(v->array().size());
  for (const MetaValue& e : v->array()) {
    auto d = e.as_float();
    if (!d) wrong_type(key, *v, "an array of numbers");
    out.push_back(*d);
  }
  return out;
}

std::optional<std::vector<int64_t>> Metadata::get_int_array(const std::string& key) const {
  const MetaValue* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array() || !(is_integer_type(v->elem_type) || v->elem_type == MetaType::BOOL)) {
    wrong_type(key, *v, "an array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(v->array().size());
  for (const MetaValue& e : v->array()) {
    auto i = e.as_int();
    if (!i) fail("metadata {} holds a value that does not fit in a signed 64-bit integer", key);
    out.push_back(*i);
  }
  return out;
}

int64_t Metadata::need_int(const std::string& key) const {
  auto v = get_int(key);
  if (!v) fail("model metadata lacks {}", key);
  return *v;
}

double Metadata::need_float(const std::string& key) const {
  auto v = get_float(key);
  if (!v) fail("model metadata lacks {}", key);
  return *v;
}

std::string Metadata::need_string(const std::string& key) const {
  auto v = get_string(key);
  if (!v) fail("model metadata lacks {}", key);
  return *v;
}

}  // namespace dashlm
