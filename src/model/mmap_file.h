// Read-only memory map of a whole file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace dashlm {

class MmapFile {
 public:
  // Throws dashlm::Error if the file cannot be opened or mapped.
  static std::shared_ptr<MmapFile> open(const std::string& path);
  ~MmapFile();
  MmapFile(const MmapFile&) = delete;
  MmapFile& operator=(const MmapFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MmapFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace dashlm
