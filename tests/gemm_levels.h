// The CPU kernel levels a test can run on this machine, and a scoped switch between them.
#pragma once
#include <gtest/gtest.h>

#include <vector>

#include "backends/cpu/gemm.h"

namespace dashlm::test {

inline std::vector<cpu::GemmLevel> runnable_levels() {
  std::vector<cpu::GemmLevel> out;
  for (cpu::GemmLevel l : {cpu::GemmLevel::scalar, cpu::GemmLevel::avx2, cpu::GemmLevel::avx512}) {
    if (l <= cpu::gemm_max_level()) out.push_back(l);
  }
  return out;
}

// Sets a level for the scope of a test and restores the previous one.
class LevelGuard {
 public:
  explicit LevelGuard(cpu::GemmLevel l) : saved_(cpu::gemm_level()) { EXPECT_EQ(cpu::gemm_set_level(l), l); }
  ~LevelGuard() { cpu::gemm_set_level(saved_); }
  LevelGuard(const LevelGuard&) = delete;
  LevelGuard& operator=(const LevelGuard&) = delete;

 private:
  cpu::GemmLevel saved_;
};

}  // namespace dashlm::test
