// GGUF reader (versions 2 and 3, little-endian).
//
// Layout: "GGUF", u32 version, u64 tensor count, u64 key/value count, the key/value pairs
// (u64-length string key, u32 value type, value), the tensor infos (string name, u32 n_dims,
// n_dims x u64 ne, u32 type, u64 offset), padding to general.alignment, then the data section;
// each tensor offset is relative to the data section.
//
// The file is untrusted input: every count, length and offset is checked against the bytes that
// are left before anything is allocated or read, all arithmetic is overflow-checked, and every
// failure is a one-line dashlm::Error naming the file. Tensors point into the caller's buffer.
#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "common/error.h"
#include "model/mmap_file.h"
#include "model/model_file.h"

namespace dashlm {

namespace {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes a little-endian host");

constexpr uint32_t kDefaultAlignment = 32;
// Array values nest (arrays of arrays); deeper nesting than this is not a real model file and
// would only recurse deeply.
constexpr int kMaxArrayDepth = 8;
// All arrays together may hold at most this many elements. Real vocabularies (tokens, scores,
// types, merges) total a few million; the cap bounds memory for a hostile file to a few GiB.
constexpr uint64_t kMaxMetaElements = uint64_t{1} << 24;
// Real files have at most a few thousand tensors and a few dozen keys; a header claiming
// millions is corrupt, and is rejected before anything is allocated for it.
constexpr uint64_t kMaxTensors = uint64_t{1} << 20;
constexpr uint64_t kMaxKeys = uint64_t{1} << 20;
// Vectors grow as entries are actually read, never to a claimed count beyond this.
constexpr uint64_t kMaxReserve = uint64_t{1} << 16;
constexpr uint32_t kMaxDims = 4;

// Smallest encoded size of one value of a type; used to reject counts the file cannot hold.
uint64_t min_value_bytes(MetaType t) {
  switch (t) {
    case MetaType::U8:
    case MetaType::I8:
    case MetaType::BOOL:
      return 1;
    case MetaType::U16:
    case MetaType::I16:
      return 2;
    case MetaType::U32:
    case MetaType::I32:
    case MetaType::F32:
      return 4;
    case MetaType::U64:
    case MetaType::I64:
    case MetaType::F64:
      return 8;
    case MetaType::STRING:
      return 8;  // length only
    case MetaType::ARRAY:
      return 12;  // element type + count
  }
  return 1;
}

bool valid_meta_type(uint32_t t) { return t <= static_cast<uint32_t>(MetaType::F64); }

class Reader {
 public:
  Reader(const uint8_t* data, size_t size, const std::string& name) : data_(data), size_(size), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  const std::string& name() const { return name_; }

  // what/subject describe the field for the error message ("data offset" of "tensor x").
  void need(uint64_t n, const char* what, const std::string& subject) const {
    if (n > remaining()) {
      fail("{}: truncated or corrupt GGUF: the {} of {} needs {} bytes at offset {}, but only {} are left", name_, what,
           subject, n, pos_, remaining());
    }
  }

  template <typename T>
  T get(const char* what, const std::string& subject) {
    need(sizeof(T), what, subject);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string get_string(const char* what, const std::string& subject) {
    const uint64_t n = get<uint64_t>(what, subject);
    need(n, what, subject);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& name_;
};

MetaValue read_value(Reader& r, MetaType t, const std::string& key, int depth, uint64_t& budget) {
  const char* what = "value";
  switch (t) {
    case MetaType::U8:
      return MetaValue::of_uint(r.get<uint8_t>(what, key), t);
    case MetaType::I8:
      return MetaValue::of_int(r.get<int8_t>(what, key), t);
    case MetaType::U16:
      return MetaValue::of_uint(r.get<uint16_t>(what, key), t);
    case MetaType::I16:
      return MetaValue::of_int(r.get<int16_t>(what, key), t);
    case MetaType::U32:
      return MetaValue::of_uint(r.get<uint32_t>(what, key), t);
    case MetaType::I32:
      return MetaValue::of_int(r.get<int32_t>(what, key), t);
    case MetaType::U64:
      return MetaValue::of_uint(r.get<uint64_t>(what, key), t);
    case MetaType::I64:
      return MetaValue::of_int(r.get<int64_t>(what, key), t);
    case MetaType::F32:
      return MetaValue::of_float(r.get<float>(what, key), t);
    case MetaType::F64:
      return MetaValue::of_float(r.get<double>(what, key), t);
    case MetaType::BOOL:
      return MetaValue::of_bool(r.get<uint8_t>(what, key) != 0);
    case MetaType::STRING:
      return MetaValue::of_string(r.get_string(what, key));
    case MetaType::ARRAY: {
      const uint32_t et = r.get<uint32_t>("array element type", key);
      if (!valid_meta_type(et)) fail("{}: key {} is an array of unknown value type {}", r.name(), key, et);
      const auto elem = static_cast<MetaType>(et);
      if (elem == MetaType::ARRAY && depth + 1 >= kMaxArrayDepth) {
        fail("{}: key {} nests arrays more than {} deep", r.name(), key, kMaxArrayDepth);
      }
      const uint64_t n = r.get<uint64_t>("array length", key);
      const uint64_t min_bytes = min_value_bytes(elem);
      if (n > r.remaining() / min_bytes) {
        fail(
            "{}: key {} claims an array of {} {} values, which needs at least {} bytes per value, but only {} "
            "bytes are left",
            r.name(), key, n, meta_type_name(elem), min_bytes, r.remaining());
      }
      if (n > budget) {
        fail("{}: key {} has an array of {} values, more than dashlm accepts in metadata ({} in all)", r.name(), key, n,
             kMaxMetaElements);
      }
      budget -= n;
      MetaArray a;
      a.reserve(static_cast<size_t>(std::min(n, kMaxReserve)));
      for (uint64_t i = 0; i < n; ++i) a.push_back(read_value(r, elem, key, depth + 1, budget));
      return MetaValue::of_array(elem, std::move(a));
    }
  }
  fail("{}: key {} has unknown value type {}", r.name(), key, static_cast<uint32_t>(t));
}

// Reads general.alignment: any integer type, non-zero power of two, at most 2^31.
uint64_t read_alignment(const Metadata& meta, const std::string& name) {
  const MetaValue* v = meta.find("general.alignment");
  if (!v) return kDefaultAlignment;
  if (v->is_array() || v->as_string() || v->type == MetaType::BOOL || v->type == MetaType::F32 ||
      v->type == MetaType::F64) {
    fail("{}: general.alignment has type {}, expected an integer", name, meta_type_name(v->type));
  }
  const auto a = v->as_int();
  if (!a || *a <= 0 || *a > (int64_t{1} << 31) || (*a & (*a - 1)) != 0) {
    fail("{}: general.alignment {} is not a non-zero power of two", name, v->to_display());
  }
  return static_cast<uint64_t>(*a);
}

struct RawTensor {
  TensorInfo info;
  uint32_t type = 0;
  uint64_t offset = 0;
};

}  // namespace

std::unique_ptr<ModelFile> parse_gguf(const uint8_t* data, size_t size, const std::string& name) {
  if (data == nullptr || size < 4 || std::memcmp(data, "GGUF", 4) != 0) {
    fail("{}: not a GGUF file (no GGUF magic)", name);
  }
  Reader r(data, size, name);
  const std::string file = "the file";
  r.get<uint32_t>("magic", file);
  const uint32_t version = r.get<uint32_t>("version", file);
  if (version == 1) fail("{}: GGUF v1 is not supported (convert it to v3 with a current llama.cpp)", name);
  if (version != 2 && version != 3) {
    // A byte-swapped small version number means a big-endian file.
    if ((version & 0xffffu) == 0 && version != 0) fail("{}: big-endian GGUF is not supported", name);
    fail("{}: GGUF version {} is not supported (only 2 and 3)", name, version);
  }
  const uint64_t n_tensors = r.get<uint64_t>("tensor count", file);
  const uint64_t n_kv = r.get<uint64_t>("metadata count", file);
  // Smallest possible entries: a key/value pair is 8 (key length) + 4 (type) + 1 (u8 value);
  // a tensor info is 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
  if (n_kv > r.remaining() / 13 || n_tensors > r.remaining() / 24 || n_kv * 13 + n_tensors * 24 > r.remaining()) {
    fail("{}: corrupt GGUF header: {} metadata entries and {} tensors cannot fit in the {} bytes of the file", name,
         n_kv, n_tensors, size);
  }
  if (n_tensors > kMaxTensors) {
    fail("{}: GGUF header claims {} tensors, more than dashlm accepts ({})", name, n_tensors, kMaxTensors);
  }
  if (n_kv > kMaxKeys) {
    fail("{}: GGUF header claims {} metadata entries, more than dashlm accepts ({})", name, n_kv, kMaxKeys);
  }

  auto f = std::make_unique<ModelFile>();
  f->path = name;
  f->format = "gguf";
  f->format_version = version;

  uint64_t budget = kMaxMetaElements;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = r.get_string("key", fmt::format("metadata entry #{}", i));
    const uint32_t t = r.get<uint32_t>("value type", key);
    if (!valid_meta_type(t)) fail("{}: key {} has unknown value type {}", name, key, t);
    if (f->meta.has(key)) fail("{}: duplicate metadata key {}", name, key);
    MetaValue v = read_value(r, static_cast<MetaType>(t), key, 0, budget);
    f->meta.set(key, std::move(v));
  }
  const uint64_t alignment = read_alignment(f->meta, name);

  std::vector<RawTensor> raw;
  raw.reserve(static_cast<size_t>(std::min(n_tensors, kMaxReserve)));
  std::unordered_set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    RawTensor t;
    t.info.name = r.get_string("name", fmt::format("tensor #{}", i));
    const std::string& tn = t.info.name;
    if (tn.empty()) fail("{}: tensor #{} has an empty name", name, i);
    if (!names.insert(tn).second) fail("{}: duplicate tensor {}", name, tn);
    const uint32_t n_dims = r.get<uint32_t>("dimension count", tn);
    if (n_dims == 0 || n_dims > kMaxDims) {
      fail("{}: tensor {} has {} dimensions (1 to {} are allowed)", name, tn, n_dims, kMaxDims);
    }
    // Both the element count and the row count (product of ne[1..]) must fit in int64.
    int64_t n_elem = 1, n_rows = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = r.get<uint64_t>("shape", tn);
      if (ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(n_elem, static_cast<int64_t>(ne), &n_elem) ||
          (d > 0 && __builtin_mul_overflow(n_rows, static_cast<int64_t>(ne), &n_rows))) {
        fail("{}: tensor {} has an impossibly large shape", name, tn);
      }
      t.info.ne.push_back(static_cast<int64_t>(ne));
    }
    t.type = r.get<uint32_t>("type", tn);
    if (!dtype_traits(t.type)) fail("{}: tensor {} has unknown type {}", name, tn, t.type);
    t.offset = r.get<uint64_t>("data offset", tn);
    raw.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t pos = r.pos();
  const uint64_t data_start = (pos + alignment - 1) / alignment * alignment;  // pos <= size, no overflow
  for (RawTensor& t : raw) {
    const std::string& tn = t.info.name;
    const DTypeTraits traits = *dtype_traits(t.type);
    t.info.type = static_cast<DType>(t.type);
    if (traits.block_size <= 0 || traits.block_bytes == 0) {
      fail("{}: tensor {} has type {}, which has no storage size", name, tn, traits.name);
    }
    const int64_t ne0 = t.info.ne[0];
    if (ne0 % traits.block_size != 0) {
      fail("{}: tensor {} has {} columns, not a multiple of the block size {} of type {}", name, tn, ne0,
           traits.block_size, traits.name);
    }
    uint64_t row_bytes = 0, nbytes = 0, end = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(ne0 / traits.block_size),
                               static_cast<uint64_t>(traits.block_bytes), &row_bytes) ||
        __builtin_mul_overflow(row_bytes, static_cast<uint64_t>(t.info.rows()), &nbytes)) {
      fail("{}: tensor {} of shape {} is impossibly large", name, tn, t.info.shape_str());
    }
    if (t.offset % alignment != 0) {
      fail("{}: tensor {} has data offset {}, not a multiple of the alignment {}", name, tn, t.offset, alignment);
    }
    if (__builtin_add_overflow(data_start, t.offset, &end) || __builtin_add_overflow(end, nbytes, &end) || end > size) {
      fail("{}: tensor {} ({} bytes at data offset {}) lies outside the file ({} bytes, data section at {})", name, tn,
           nbytes, t.offset, size, data_start);
    }
    t.info.data = data + data_start + t.offset;
    t.info.nbytes = static_cast<size_t>(nbytes);
    f->add_tensor(std::move(t.info));
  }
  return f;
}

std::unique_ptr<ModelFile> load_gguf(const std::string& path) {
  auto map = MmapFile::open(path);
  auto f = parse_gguf(map->data(), map->size(), path);
  f->keep_alive(map);
  return f;
}

}  // namespace dashlm
