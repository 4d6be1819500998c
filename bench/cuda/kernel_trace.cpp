#include "kernel_trace.h"

#include <cupti.h>
#include <cuda_runtime.h>
#include <cxxabi.h>

#include <cstdlib>
#include <iterator>
#include <memory>
#include <mutex>

namespace dashlm::bench {

namespace {

std::mutex g_mu;
GpuTrace* g_out = nullptr;

std::string demangle(const char* name) {
  if (!name) return "?";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free);
  return status == 0 && d ? std::string(d.get()) : std::string(name);
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *size = size_t{8} << 20;
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* r = nullptr;
  std::lock_guard<std::mutex> lock(g_mu);
  while (g_out && cuptiActivityGetNextRecord(buffer, valid, &r) == CUPTI_SUCCESS) {
    GpuTrace::Item it;
    if (r->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || r->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(r);
      it = {demangle(k->name), k->start, k->end};
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(r);
      const char* kinds[] = {"?", "HtoD", "DtoH", "HtoA", "AtoH", "AtoA", "AtoD", "DtoA", "DtoD", "HtoH", "PtoP"};
      it = {std::string("memcpy ") + (m->copyKind < 11 ? kinds[m->copyKind] : "?"), m->start, m->end};
    } else if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(r);
      it = {"memset", m->start, m->end};
    } else {
      continue;
    }
    g_out->items.push_back(std::move(it));
  }
  std::free(buffer);
}

}  // namespace

bool trace_gpu(const std::function<void()>& work, GpuTrace* out, std::string* why) {
  const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                      CUPTI_ACTIVITY_KIND_MEMSET};
  auto fail = [&](const char* what, CUptiResult r) {
    const char* s = nullptr;
    cuptiGetResultString(r, &s);
    if (why) *why = std::string(what) + ": " + (s ? s : "?");
    return false;
  };
  if (CUptiResult r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed); r != CUPTI_SUCCESS)
    return fail("cuptiActivityRegisterCallbacks", r);
  // Whatever happens below (a kind that cannot be enabled, work() throwing), recording stops and
  // the records already taken are delivered before `out` can go away.
  struct Session {
    const CUpti_ActivityKind* kinds;
    size_t n;
    Session(const CUpti_ActivityKind* k, size_t count, GpuTrace* o) : kinds(k), n(count) {
      std::lock_guard<std::mutex> lock(g_mu);
      g_out = o;
    }
    ~Session() {
      cudaDeviceSynchronize();
      cuptiActivityFlushAll(1);
      for (size_t i = 0; i < n; ++i) cuptiActivityDisable(kinds[i]);
      std::lock_guard<std::mutex> lock(g_mu);
      g_out = nullptr;
    }
  } session(kinds, std::size(kinds), out);
  for (auto k : kinds)
    if (CUptiResult r = cuptiActivityEnable(k); r != CUPTI_SUCCESS) return fail("cuptiActivityEnable", r);
  work();
  return true;
}

}  // namespace dashlm::bench
