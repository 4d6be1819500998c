// Dense causal attention through cuDNN's fused flash attention (cudnn-frontend's SDPA graph).
//
// cuDNN is opened at run time (dlopen of libcudnn.so.9, or the file named by $DASHLM_CUDNN), so
// the CUDA module runs without it and falls back to dashlm's own kernel. One execution plan is
// built per shape and cached. With DASHLM_CUDNN_DYNAMIC=1, where the cuDNN version supports
// dynamic shapes, plans of new sequence lengths reuse the compiled kernel of their graph kind and
// head layout (one kernel cache per layout: dynamic shapes vary lengths, not heads). Off by
// default: with cuDNN 9.19 and a single cache shared by every layout, a process that ran two
// models (32/8 then 28/4 heads) aborted with an illegal memory access, and the first plan of a
// process took 1.1 s instead of 0.2 s.
//
// Layout: q/out rows of n_head x head_dim bf16 (token-major, "BSHD" with B = 1), k/v cache slots
// of n_head_kv x head_dim: the graph states them as [1, heads, seq, head_dim] tensors with the
// matching strides, so nothing is transposed or copied.
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "backends/cuda/cuda_ops.h"

#if DASHLM_HAVE_CUDNN
#include <cudnn_frontend.h>

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the handle the frontend's dynamic loading resolves symbols from
}  // namespace cudnn_frontend
#endif

namespace dashlm::cuda {

namespace detail {
[[noreturn]] void raise_error(const std::string& msg);
cudaStream_t stream();  // common.cuh (not includable here: it holds device code)
}

#if DASHLM_HAVE_CUDNN
namespace {

namespace fe = cudnn_frontend;

// (s_q, s_kv, n_head, n_head_kv, head_dim, scale bits); s_q < 0: the subset graph of -s_q blocks
using Key = std::tuple<int64_t, int64_t, int, int, int, uint32_t>;
constexpr int kBlock = 128;  // query rows per block in attention_subset

struct State {
  std::mutex mu;
  bool tried = false;
  bool ok = false;
  bool enabled = true;
  std::string why;
  cudnnHandle_t handle = nullptr;
  // Kernel caches of dynamic-shape graphs, per (subset graph?, heads, KV heads, head dim, scale).
  mutable std::map<std::tuple<bool, int, int, int, uint32_t>, std::shared_ptr<fe::KernelCache>> kernels;
  bool dynamic = false;  // dynamic shapes (DASHLM_CUDNN_DYNAMIC=1); off after the first failure
  int plans_built = 0, plans_rejected = 0;
  double build_ms = 0;
  std::map<Key, std::shared_ptr<fe::graph::Graph>> graphs;
  std::set<std::tuple<int, int, int, uint32_t>> rejected;  // head counts, head dim, scale: not retried
  // Scratch that only grows (DeviceBuffer::reserve).
  DeviceBuffer<uint8_t> workspace;
  DeviceBuffer<bf16> q_pad, part;
  DeviceBuffer<float> lse, lse_part;
  DeviceBuffer<int32_t> seq;
  std::vector<int32_t> seq_host, seq_now;  // what st.seq holds, and this call's

  bool init() {
    if (tried) return ok;
    tried = true;
    const char* named = std::getenv("DASHLM_CUDNN");
    if (named && (std::strcmp(named, "0") == 0 || std::strcmp(named, "off") == 0)) {
      why = "cuDNN attention disabled by DASHLM_CUDNN=" + std::string(named);
      return false;
    }
    std::string tried_names;
    for (const char* name : {named, "libcudnn.so.9", "libcudnn.so"}) {
      if (!name || !*name) continue;
      fe::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
      if (fe::cudnn_dlhandle) break;
      tried_names += tried_names.empty() ? name : std::string(", ") + name;
    }
    if (!fe::cudnn_dlhandle) {
      why = "cuDNN not found (tried " + tried_names + "; set DASHLM_CUDNN to the path of libcudnn.so.9)";
      return false;
    }
    try {
      const auto version = fe::detail::get_backend_version();
      if (version < 90300) {
        why = "cuDNN " + std::to_string(version) + " is older than 9.3";
        return false;
      }
      if (fe::detail::create_handle(&handle) != CUDNN_STATUS_SUCCESS) {
        why = "cudnnCreate failed";
        return false;
      }
      fe::detail::set_stream(handle, detail::stream());  // the stream every other op runs on
    } catch (const std::exception& e) {
      why = std::string("cuDNN: ") + e.what();
      return false;
    }
    const char* dyn_env = std::getenv("DASHLM_CUDNN_DYNAMIC");
    dynamic = dyn_env && std::string(dyn_env) == "1";
    ok = true;
    return true;
  }

  std::shared_ptr<fe::graph::Graph> build(const Key& key, bool dyn, std::string* err) const {
    const auto [s_q, s_kv, h, hkv, d, scale_bits] = key;
    float scale;
    std::memcpy(&scale, &scale_bits, sizeof scale);
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    if (dyn) {
      auto& cache = kernels[std::make_tuple(s_q < 0, h, hkv, d, scale_bits)];
      if (!cache) cache = std::make_shared<fe::KernelCache>();
      g->set_dynamic_shape_enabled(true).set_kernel_cache(cache);
    }
    // [batch, heads, seq, d] over token-major rows of heads x d; batch_stride 0: shared by the batch.
    auto tensor = [&](const char* name, int64_t uid, int64_t batch, int64_t heads, int64_t seq, int64_t batch_stride) {
      return g->tensor(fe::graph::Tensor_attributes()
                           .set_name(name)
                           .set_uid(uid)
                           .set_dim({batch, heads, seq, d})
                           .set_stride({batch_stride, d, heads * d, 1}));
    };
    if (s_q < 0) {
      // The subset graph: -s_q blocks of kBlock query rows (a padded batch), each against the
      // first seq_kv[b] keys of one shared K/V (batch stride 0), no mask but the padding; with
      // the log-sum-exp of every row.
      const int64_t nb = -s_q, bq = kBlock;
      auto Q = tensor("Q", 1, nb, h, bq, bq * h * d);
      auto K = tensor("K", 2, nb, hkv, s_kv, 0), V = tensor("V", 3, nb, hkv, s_kv, 0);
      auto seq = [&](const char* name, int64_t uid) {
        return g->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({nb, 1, 1, 1})
                             .set_stride({1, 1, 1, 1})
                             .set_data_type(fe::DataType_t::INT32));
      };
      auto attr = fe::graph::SDPA_attributes()
                      .set_name("attention_blocks")
                      .set_generate_stats(true)
                      .set_attn_scale(scale)
                      .set_padding_mask(true)
                      .set_seq_len_q(seq("seq_q", 6))
                      .set_seq_len_kv(seq("seq_kv", 7));
      auto [O, stats] = g->sdpa(Q, K, V, attr);
      O->set_output(true).set_uid(4).set_dim({nb, h, bq, d}).set_stride({bq * h * d, d, h * d, 1});
      stats->set_output(true).set_uid(5).set_data_type(fe::DataType_t::FLOAT).set_dim({nb, h, bq, 1}).set_stride(
          {h * bq, bq, 1, 1});
    } else {
      auto Q = tensor("Q", 1, 1, h, s_q, s_q * h * d);
      auto K = tensor("K", 2, 1, hkv, s_kv, s_kv * hkv * d), V = tensor("V", 3, 1, hkv, s_kv, s_kv * hkv * d);
      auto attr = fe::graph::SDPA_attributes().set_name("attention").set_generate_stats(false).set_attn_scale(scale);
      if (s_q == s_kv) {
        attr.set_causal_mask(true);
      } else {
        attr.set_causal_mask_bottom_right(true);
      }
      auto [O, stats] = g->sdpa(Q, K, V, attr);
      (void)stats;
      O->set_output(true).set_uid(4).set_dim({1, h, s_q, d}).set_stride({s_q * h * d, d, h * d, 1});
    }
    auto e = g->build(handle, {fe::HeurMode_t::A});
    if (!e.is_good()) {
      *err = e.get_message();
      return nullptr;
    }
    return g;
  }

  fe::graph::Graph* graph(const Key& key) {
    if (auto it = graphs.find(key); it != graphs.end()) return it->second.get();
    const auto config = std::make_tuple(std::get<0>(key) < 0 ? -std::get<2>(key) : std::get<2>(key), std::get<3>(key),
                                        std::get<4>(key), std::get<5>(key));
    if (rejected.count(config)) return nullptr;
    const auto t0 = std::chrono::steady_clock::now();
    std::string err;
    std::shared_ptr<fe::graph::Graph> g;
    if (dynamic) {
      g = build(key, true, &err);
      if (!g) dynamic = false;  // this cuDNN does not do dynamic shapes for SDPA: plain plans from now on
    }
    if (!g) g = build(key, false, &err);
    if (g) {
      graphs[key] = g;
    } else {  // a rejected head configuration is not tried again at other lengths
      rejected.insert(config);
      why = "cuDNN rejected the attention graph: " + err;
    }
    (g ? plans_built : plans_rejected) += 1;
    build_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    return g.get();
  }

  // The plan for s_q query rows (negative: that many blocks of the subset graph) against s_kv
  // keys, with the workspace it needs; null when cuDNN is off, missing or rejects the shape.
  // Called with mu held.
  fe::graph::Graph* plan(int64_t s_q, int64_t s_kv, const AttentionParams& p) {
    if (!enabled || !init()) return nullptr;
    uint32_t scale_bits;
    std::memcpy(&scale_bits, &p.scale, sizeof scale_bits);
    fe::graph::Graph* g = graph(Key{s_q, s_kv, p.n_head, p.n_head_kv, p.head_dim, scale_bits});
    int64_t ws = 0;
    if (!g || !g->get_workspace_size(ws).is_good()) return nullptr;
    workspace.reserve(static_cast<size_t>(std::max<int64_t>(ws, 1)));
    return g;
  }
};

State& state() {
  // Never destroyed: cuDNN's descriptors and the device buffers must not be released after the
  // CUDA runtime has been torn down at exit; the process exit releases the device.
  static State* s = new State;
  return *s;
}

}  // namespace

bool dense_attention_available(std::string* why) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  const bool ok = st.init() && st.enabled;
  if (!ok && why) *why = st.enabled ? st.why : "cuDNN attention switched off";
  return ok;
}

std::string dense_attention_stats() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  if (!st.ok) return st.why.empty() ? "cuDNN not loaded" : st.why;
  return "cuDNN " + std::to_string(fe::detail::get_backend_version()) + ", " + std::to_string(st.plans_built) +
         " plans built (" + std::to_string(st.plans_rejected) + " shapes rejected) in " +
         std::to_string(static_cast<int64_t>(st.build_ms)) + " ms, dynamic shapes " + (st.dynamic ? "on" : "off");
}

void set_dense_attention_enabled(bool on) {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  st.enabled = on;
}

bool attention_dense(const bf16* q, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv, const AttentionParams& p,
                     bf16* out) {
  if (n_q <= 0 || n_q > n_kv || p.window > 0) return false;
  if (p.head_dim % 8 != 0 || p.head_dim > 256 || p.n_head_kv <= 0 || p.n_head % p.n_head_kv != 0) return false;
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  fe::graph::Graph* g = st.plan(n_q, n_kv, p);
  if (!g) return false;
  std::unordered_map<int64_t, void*> pack = {{1, const_cast<bf16*>(q)}, {2, const_cast<bf16*>(k)},
                                             {3, const_cast<bf16*>(v)}, {4, out}};
  auto e = g->execute(st.handle, pack, st.workspace.get());
  if (!e.is_good()) detail::raise_error("cuDNN attention failed: " + e.get_message());
  return true;
}

bool attention_subset(const bf16* q, const int32_t* q_pos, const int32_t* q_pos_host, int64_t n_q, const bf16* k,
                      const bf16* v, int64_t n_kv, const AttentionParams& p, bf16* out) {
  if (n_q <= 0 || p.window > 0 || (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256)) return false;
  if (p.n_head_kv <= 0 || p.n_head % p.n_head_kv != 0) return false;
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  const int64_t nb = (n_q + kBlock - 1) / kBlock, rows = nb * kBlock;
  fe::graph::Graph* g = st.plan(-nb, n_kv, p);
  if (!g) return false;
  const int64_t qd = static_cast<int64_t>(p.n_head) * p.head_dim;
  // Per block: its rows, and the keys before its first position (at least 1 for cuDNN; a block
  // starting at position 0 has none, and attention_merge ignores its part).
  st.seq_now.resize(static_cast<size_t>(2 * nb));
  for (int64_t b = 0; b < nb; ++b) {
    st.seq_now[static_cast<size_t>(b)] = static_cast<int32_t>(std::min<int64_t>(kBlock, n_q - b * kBlock));
    st.seq_now[static_cast<size_t>(nb + b)] = std::max<int32_t>(1, q_pos_host[b * kBlock]);
  }
  // The same for every layer after a halting decision: uploaded (a synchronising copy) only when
  // it changes.
  if (st.seq_now != st.seq_host) {
    st.seq_host.clear();  // until the device holds the new list
    st.seq.reserve(st.seq_now.size());
    st.seq.upload(st.seq_now.data(), st.seq_now.size());
    st.seq_host.swap(st.seq_now);
  }
  st.q_pad.reserve(static_cast<size_t>(rows * qd));  // whole blocks of rows: cuDNN may read the padding
  copy_on_device(st.q_pad.get(), q, static_cast<size_t>(n_q * qd) * sizeof(bf16));
  st.part.reserve(static_cast<size_t>(rows * qd));
  st.lse_part.reserve(static_cast<size_t>(rows * p.n_head));
  st.lse.reserve(static_cast<size_t>(n_q * p.n_head));
  bf16* part = st.part.get();
  float *lse_part = st.lse_part.get(), *lse = st.lse.get();
  int32_t* seq = st.seq.get();
  std::unordered_map<int64_t, void*> pack = {{1, st.q_pad.get()}, {2, const_cast<bf16*>(k)}, {3, const_cast<bf16*>(v)},
                                             {4, part}, {5, lse_part}, {6, seq}, {7, seq + nb}};
  auto e = g->execute(st.handle, pack, st.workspace.get());
  if (!e.is_good()) detail::raise_error("cuDNN attention (query blocks) failed: " + e.get_message());
  attention_tail(q, q_pos, n_q, k, v, n_kv, p, kBlock, out, lse);
  attention_merge(out, lse, part, lse_part, q_pos, n_q, p.n_head, p.head_dim, kBlock);
  return true;
}

#else  // built without cudnn-frontend's headers

bool dense_attention_available(std::string* why) {
  if (why) *why = "built without cuDNN support (cudnn_frontend.h was not found at configure time)";
  return false;
}
void set_dense_attention_enabled(bool) {}
std::string dense_attention_stats() { return "built without cuDNN support"; }
bool attention_subset(const bf16*, const int32_t*, const int32_t*, int64_t, const bf16*, const bf16*, int64_t,
                      const AttentionParams&, bf16*) {
  return false;
}
bool attention_dense(const bf16*, int64_t, const bf16*, const bf16*, int64_t, const AttentionParams&, bf16*) {
  return false;
}

#endif

}  // namespace dashlm::cuda
