// Model metadata as key -> value, in GGUF's vocabulary of keys and types.
// Every loader (GGUF, safetensors + config.json, llama2.c) fills the same keys
// (general.architecture, <arch>.block_count, tokenizer.ggml.tokens, ...), so the
// architecture and tokenizer code read one format only.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace dashlm {

// GGUF metadata value types (gguf_type).
enum class MetaType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
const char* meta_type_name(MetaType t);

struct MetaValue;
using MetaArray = std::vector<MetaValue>;

struct MetaValue {
  MetaType type = MetaType::U32;
  MetaType elem_type = MetaType::U32;  // arrays only
  // Integers (signed or not) are stored as int64/uint64, floats as double.
  std::variant<int64_t, uint64_t, double, bool, std::string, std::shared_ptr<MetaArray>> v;

  static MetaValue of_int(int64_t x, MetaType t = MetaType::I64);
  static MetaValue of_uint(uint64_t x, MetaType t = MetaType::U64);
  static MetaValue of_float(double x, MetaType t = MetaType::F32);
  static MetaValue of_bool(bool x);
  static MetaValue of_string(std::string s);
  static MetaValue of_array(MetaType elem, MetaArray a);

  bool is_array() const { return type == MetaType::ARRAY; }
  const MetaArray& array() const;  // throws if not an array
  std::optional<int64_t> as_int() const;
  std::optional<double> as_float() const;  // ints convert too
  std::optional<bool> as_bool() const;
  const std::string* as_string() const;
  std::string to_display(size_t max_items = 8) const;  // for inspect
};

class Metadata {
 public:
  void set(const std::string& key, MetaValue v) { kv_[key] = std::move(v); }
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const MetaValue* find(const std::string& key) const;
  const std::map<std::string, MetaValue>& all() const { return kv_; }
  bool erase(const std::string& key);                 // true if the key was there
  size_t erase_prefix(const std::string& prefix);     // removes every key starting with prefix

  // Scalar getters: empty optional when the key is missing; throw dashlm::Error naming the
  // key when it is present with a type that does not convert (e.g. a string read as an int).
  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  // Arrays; empty optional when the key is missing; throws if present with a wrong type.
  std::optional<std::vector<std::string>> get_string_array(const std::string& key) const;
  std::optional<std::vector<double>> get_float_array(const std::string& key) const;
  std::optional<std::vector<int64_t>> get_int_array(const std::string& key) const;

  // Required forms: throw dashlm::Error naming the key when it is missing.
  int64_t need_int(const std::string& key) const;
  double need_float(const std::string& key) const;
  std::string need_string(const std::string& key) const;

 private:
  std::map<std::string, MetaValue> kv_;
};

}  // namespace dashlm
