// A tiny GGUF writer for tests and fuzz seeds: metadata of every type (arrays and nested
// arrays included), tensors with any type number, any alignment. It writes exactly what it is
// told (no validation), so tests can also build corrupt files on purpose.
#pragma once
#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model/metadata.h"

namespace dashlm::test {

class GgufWriter {
 public:
  struct Tensor {
    std::string name;
    uint32_t type = 0;         // GGUF type number (0 = F32)
    std::vector<uint64_t> ne;  // innermost first
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset;  // overrides the computed offset
    std::optional<uint32_t> n_dims;  // overrides ne.size() in the tensor info
  };

  uint32_t version = 3;
  uint64_t alignment = 32;  // layout alignment; set_alignment also writes general.alignment

  void set(const std::string& key, MetaValue v) { kv_.emplace_back(key, std::move(v)); }
  void set_alignment(uint32_t a) {
    alignment = a;
    set("general.alignment", MetaValue::of_uint(a, MetaType::U32));
  }
  Tensor& add_tensor(std::string name, uint32_t type, std::vector<uint64_t> ne, std::vector<uint8_t> data) {
    tensors_.push_back(Tensor{std::move(name), type, std::move(ne), std::move(data), std::nullopt, std::nullopt});
    return tensors_.back();
  }
  Tensor& add_f32(std::string name, std::vector<uint64_t> ne, const std::vector<float>& values) {
    std::vector<uint8_t> bytes(values.size() * 4);
    if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    return add_tensor(std::move(name), 0, std::move(ne), std::move(bytes));
  }

  // The whole file. Tensor data follows the infos, each tensor at the next multiple of the
  // alignment; nothing follows the last tensor's data.
  std::vector<uint8_t> build() const {
    std::vector<uint8_t> out;
    put_raw(out, "GGUF", 4);
    put<uint32_t>(out, version);
    put<uint64_t>(out, tensors_.size());
    put<uint64_t>(out, kv_.size());
    for (const auto& [key, value] : kv_) {
      put_string(out, key);
      put<uint32_t>(out, static_cast<uint32_t>(value.type));
      put_value(out, value);
    }
    std::vector<uint64_t> offsets;
    uint64_t off = 0;
    for (const Tensor& t : tensors_) {
      off = align(off);
      offsets.push_back(off);
      off += t.data.size();
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      put_string(out, t.name);
      put<uint32_t>(out, t.n_dims.value_or(static_cast<uint32_t>(t.ne.size())));
      for (uint64_t d : t.ne) put<uint64_t>(out, d);
      put<uint32_t>(out, t.type);
      put<uint64_t>(out, t.offset.value_or(offsets[i]));
    }
    if (!tensors_.empty()) {
      out.resize(align(out.size()), 0);
      const size_t data_start = out.size();
      for (size_t i = 0; i < tensors_.size(); ++i) {
        out.resize(data_start + offsets[i], 0);
        out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
      }
    }
    return out;
  }

  void write(const std::string& path) const {
    const std::vector<uint8_t> bytes = build();
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!f) throw std::runtime_error("cannot write " + path);
  }

 private:
  std::vector<std::pair<std::string, MetaValue>> kv_;
  std::vector<Tensor> tensors_;

  uint64_t align(uint64_t x) const { return (x + alignment - 1) / alignment * alignment; }

  static void put_raw(std::vector<uint8_t>& out, const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  template <typename T>
  static void put(std::vector<uint8_t>& out, T v) {
    put_raw(out, &v, sizeof(T));
  }
  static void put_string(std::vector<uint8_t>& out, const std::string& s) {
    put<uint64_t>(out, s.size());
    put_raw(out, s.data(), s.size());
  }
  static int64_t ival(const MetaValue& v) {
    if (const auto* i = std::get_if<int64_t>(&v.v)) return *i;
    if (const auto* u = std::get_if<uint64_t>(&v.v)) return static_cast<int64_t>(*u);
    return 0;
  }
  static uint64_t uval(const MetaValue& v) {
    if (const auto* u = std::get_if<uint64_t>(&v.v)) return *u;
    if (const auto* i = std::get_if<int64_t>(&v.v)) return static_cast<uint64_t>(*i);
    return 0;
  }
  // The value's payload, without its type tag.
  static void put_value(std::vector<uint8_t>& out, const MetaValue& v) {
    switch (v.type) {
      case MetaType::U8:
        put<uint8_t>(out, static_cast<uint8_t>(uval(v)));
        break;
      case MetaType::I8:
        put<int8_t>(out, static_cast<int8_t>(ival(v)));
        break;
      case MetaType::U16:
        put<uint16_t>(out, static_cast<uint16_t>(uval(v)));
        break;
      case MetaType::I16:
        put<int16_t>(out, static_cast<int16_t>(ival(v)));
        break;
      case MetaType::U32:
        put<uint32_t>(out, static_cast<uint32_t>(uval(v)));
        break;
      case MetaType::I32:
        put<int32_t>(out, static_cast<int32_t>(ival(v)));
        break;
      case MetaType::U64:
        put<uint64_t>(out, uval(v));
        break;
      case MetaType::I64:
        put<int64_t>(out, ival(v));
        break;
      case MetaType::F32:
        put<float>(out, static_cast<float>(std::get<double>(v.v)));
        break;
      case MetaType::F64:
        put<double>(out, std::get<double>(v.v));
        break;
      case MetaType::BOOL:
        put<uint8_t>(out, std::get<bool>(v.v) ? 1 : 0);
        break;
      case MetaType::STRING:
        put_string(out, std::get<std::string>(v.v));
        break;
      case MetaType::ARRAY: {
        const MetaArray& a = v.array();
        put<uint32_t>(out, static_cast<uint32_t>(v.elem_type));
        put<uint64_t>(out, a.size());
        for (const MetaValue& e : a) put_value(out, e);
        break;
      }
    }
  }
};

}  // namespace dashlm::test
