// The micro-benchmarks' own flag, taken out of argv before Google Benchmark reads the rest:
// --threads=N[,N...], the thread counts to run (default 1 and all cores).
#pragma once
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backends/cpu/ops.h"

namespace dashlm::bench {

// Removes --threads=... from argv (argc updated) and returns the counts it asked for.
inline std::vector<int> take_thread_counts(int& argc, char** argv) {
  std::vector<int> counts = {1};
  if (cpu::num_threads() > 1) counts.push_back(cpu::num_threads());
  int out = 0;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      counts.clear();
      for (const char* p = argv[i] + 10; *p;) {
        counts.push_back(std::atoi(p));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return counts;
}

}  // namespace dashlm::bench
