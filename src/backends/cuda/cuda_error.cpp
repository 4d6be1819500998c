// The host-compiled half of the CUDA backend's error path: nvcc never includes fmt.
#include <string>

#include "common/error.h"

namespace dashlm::cuda::detail {

[[noreturn]] void raise_error(const std::string& msg) { throw Error(msg); }

}  // namespace dashlm::cuda::detail
