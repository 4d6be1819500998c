// The stories260K checkpoint (../shared/models), loaded once per test binary.
#pragma once
#include <memory>
#include <string>

#include "model/model.h"

namespace dashlm::test {

inline const std::string kStoriesDir = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/";

inline const Model& stories() {
  static std::unique_ptr<Model> m = Model::load(kStoriesDir + "stories260K.bin", kStoriesDir + "tok512.bin");
  return *m;
}

}  // namespace dashlm::test
