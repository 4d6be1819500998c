// How much memory this process may still take, to refuse an allocation that cannot succeed with a
// message instead of an out-of-memory kill or a std::bad_alloc.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace dashlm {

// Bytes this process can still allocate: the least of the machine's available memory
// (/proc/meminfo's MemAvailable, else free pages from sysconf), what the control group's limit
// leaves (memory.max - memory.current) and what the address-space limit (ulimit -v) leaves.
uint64_t available_memory_bytes();

// "1.5 GiB", "12.0 MiB", "512 bytes".
std::string format_bytes(uint64_t bytes);

// Throws Error when `bytes` exceed available_memory_bytes(): "WHAT need[s] 12.0 GiB (N bytes), but
// only 3.1 GiB (M bytes) of memory is available".
void check_memory(uint64_t bytes, std::string_view what);

}  // namespace dashlm
