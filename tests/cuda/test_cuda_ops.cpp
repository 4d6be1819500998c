// Every CUDA op against its CPU counterpart (backends/cpu/ops.h, the oracle) on random inputs of
// awkward sizes, outputs poisoned beforehand, within a normalised-error budget (bf16: 1e-2).
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "backends/cpu/ops.h"
#include "runtime/halting.h"
#include "cuda/cuda_test_util.h"

using namespace dashlm;
using namespace dashlm::test;
namespace cu = dashlm::cuda;

TEST(CudaOps, RmsnormRows) {
  DASHLM_REQUIRE_CUDA();
  for (int64_t dim : {8, 100, 1000, 4096, 4097, 8192}) {  // the float4 kernel and the plain one
    const int64_t n = 37;
    auto x = random_floats(static_cast<size_t>(n * dim), 1, -3, 3);
    auto w = random_floats(static_cast<size_t>(dim), 2, 0.5f, 1.5f);
    std::vector<float> ref(x.size());
    cpu::rmsnorm(x.data(), w.data(), ref.data(), n, dim, 1e-5f);
    auto dx = to_device(x), dw = to_device(w);
    auto yb = poisoned<uint16_t>(x.size());
    auto yf = poisoned<float>(x.size());
    cu::rmsnorm(dx.get(), dw.get(), yb.get(), n, dim, 1e-5f);
    cu::rmsnorm(dx.get(), dw.get(), yf.get(), n, dim, 1e-5f);
    EXPECT_LT(norm_err(to_host_bf16(yb, x.size()), ref), kBf16Budget) << dim;
    EXPECT_LT(norm_err(to_host(yf, x.size()), ref), 1e-5) << dim;
    cu::rmsnorm(dx.get(), nullptr, dx.get(), n, dim, 1e-5f);  // in place, no weight
    std::vector<float> ref2(x.size());
    cpu::rmsnorm(x.data(), nullptr, ref2.data(), n, dim, 1e-5f);
    EXPECT_LT(norm_err(to_host(dx, x.size()), ref2), 1e-5) << dim;
  }
}

TEST(CudaOps, PrepHeadsBiasNormRopeScatter) {
  DASHLM_REQUIRE_CUDA();
  struct Case { int hd, n_rot; bool neox, norm, bias, factors; float scale; };
  const Case cases[] = {{8, 8, false, false, false, false, 1.f},  {64, 64, true, true, true, false, 1.f},
                        {128, 128, false, false, true, false, 0.25f}, {128, 64, true, true, false, true, 1.f},
                        {256, 256, true, true, false, false, 1.f}, {96, 32, false, false, false, false, 1.f}};
  for (const Case& c : cases) {
    const int heads = 3;
    const int64_t n = 41, width = int64_t{heads} * c.hd, stride = width + 16;
    auto x = random_floats(static_cast<size_t>(n * stride), 3, -2, 2);
    auto bias = random_floats(static_cast<size_t>(width), 4);
    auto nw = random_floats(static_cast<size_t>(c.hd), 5, 0.5f, 1.5f);
    auto ff = random_floats(static_cast<size_t>(c.n_rot / 2), 6, 1.f, 4.f);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    std::mt19937 rng(7);
    int32_t p = 0;
    for (auto& v : pos) v = p += 1 + static_cast<int32_t>(rng() % 5000);  // up to ~10^5
    // CPU: bias, per-head RMSNorm, RoPE, on a dense copy.
    std::vector<float> ref(static_cast<size_t>(n * width));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < width; ++i) ref[static_cast<size_t>(r * width + i)] = x[static_cast<size_t>(r * stride + i)] + (c.bias ? bias[static_cast<size_t>(i)] : 0.f);
    if (c.norm) cpu::rmsnorm_heads(ref.data(), nw.data(), n * heads, c.hd, 1e-6f);
    cpu::RopeParams rp;
    rp.head_dim = c.hd;
    rp.n_rot = c.n_rot;
    rp.neox = c.neox;
    rp.freq_base = 500000.f;
    rp.freq_scale = c.scale;
    rp.freq_factors = c.factors ? ff.data() : nullptr;
    cpu::rope(ref.data(), n, heads, width, pos.data(), rp);

    auto dx = to_device(x), db = to_device(bias), dn = to_device(nw), dff = to_device(ff);
    auto dpos = to_device(pos);
    cu::RopeParams gp;
    gp.head_dim = c.hd;
    gp.n_rot = c.n_rot;
    gp.neox = c.neox;
    gp.freq_base = 500000.f;
    gp.freq_scale = c.scale;
    gp.freq_factors = c.factors ? dff.get() : nullptr;
    // bf16 out, scattered to rows n-1-r.
    std::vector<int32_t> rows(static_cast<size_t>(n));
    for (int64_t r = 0; r < n; ++r) rows[static_cast<size_t>(r)] = static_cast<int32_t>(n - 1 - r);
    auto drows = to_device(rows);
    auto out = poisoned<uint16_t>(static_cast<size_t>(n * width));
    cu::prep_heads(dx.get(), stride, n, heads, c.bias ? db.get() : nullptr, c.norm ? dn.get() : nullptr, 1e-6f, gp, dpos.get(),
                   out.get(), width, drows.get());
    auto got = to_host_bf16(out, static_cast<size_t>(n * width));
    std::vector<float> unscattered(got.size());
    for (int64_t r = 0; r < n; ++r)
      std::copy_n(got.begin() + (n - 1 - r) * width, width, unscattered.begin() + r * width);
    EXPECT_LT(norm_err(unscattered, ref), kBf16Budget) << "hd " << c.hd;
    // f32 in place.
    cu::prep_heads_f32(dx.get(), stride, n, heads, c.bias ? db.get() : nullptr, c.norm ? dn.get() : nullptr, 1e-6f, gp, dpos.get());
    auto xf = to_host(dx, x.size());
    std::vector<float> dense(ref.size());
    for (int64_t r = 0; r < n; ++r) std::copy_n(xf.begin() + r * stride, width, dense.begin() + r * width);
    EXPECT_LT(norm_err(dense, ref), 1e-5) << "hd " << c.hd;
  }
}

TEST(CudaOps, GatedActivations) {
  DASHLM_REQUIRE_CUDA();
  for (int64_t ff : {1003, 1024})  // plain and 8-wide kernels
  for (bool gelu : {false, true}) {
    const int64_t n = 19;
    auto gu = round_bf16(random_floats(static_cast<size_t>(n * 2 * ff), 8, -4, 4));
    auto dgu = to_device(to_bf16_bits(gu));
    std::vector<float> g(static_cast<size_t>(n * ff)), u(g.size());
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < ff; ++i) {
        g[static_cast<size_t>(r * ff + i)] = gu[static_cast<size_t>(r * 2 * ff + i)];
        u[static_cast<size_t>(r * ff + i)] = gu[static_cast<size_t>(r * 2 * ff + ff + i)];
      }
    auto dg = to_device(g), du = to_device(u);
    auto h = poisoned<uint16_t>(g.size());
    if (gelu) {
      cu::geglu_tanh(dgu.get(), h.get(), n, ff);
      cu::gelu_tanh_mul(dg.get(), du.get(), n * ff);
      cpu::gelu_tanh_mul(g.data(), u.data(), n * ff);
    } else {
      cu::swiglu(dgu.get(), h.get(), n, ff);
      cu::silu_mul(dg.get(), du.get(), n * ff);
      cpu::silu_mul(g.data(), u.data(), n * ff);
    }
    EXPECT_LT(norm_err(to_host_bf16(h, g.size()), g), kBf16Budget) << gelu << " ff " << ff;
    EXPECT_LT(norm_err(to_host(dg, g.size()), g), 1e-5) << gelu << " ff " << ff;
  }
}

TEST(CudaOps, ResidualAddWithDeltasAndNextNorm) {
  DASHLM_REQUIRE_CUDA();
  const int64_t n = 23, d = 1537;
  auto x = random_floats(static_cast<size_t>(n * d), 9, -2, 2), u = random_floats(static_cast<size_t>(n * d), 10);
  auto w = random_floats(static_cast<size_t>(d), 11, 0.5f, 1.5f);
  std::vector<float> nu(static_cast<size_t>(n)), nx(nu.size()), xr = x, xn_ref(x.size());
  cpu::row_l2_norms(u.data(), n, d, nu.data());
  cpu::row_l2_norms(x.data(), n, d, nx.data());
  cpu::add_inplace(xr.data(), u.data(), n * d);
  cpu::rmsnorm(xr.data(), w.data(), xn_ref.data(), n, d, 1e-5f);
  auto dx = to_device(x), du = to_device(u), dw = to_device(w);
  auto dnu = poisoned<float>(nu.size()), dnx = poisoned<float>(nu.size());
  auto dxn = poisoned<uint16_t>(x.size());
  cu::add_residual(dx.get(), du.get(), n, d, dnu.get(), dnx.get(), dw.get(), dxn.get(), 1e-5f);
  EXPECT_LT(norm_err(to_host(dx, x.size()), xr), 1e-6);
  EXPECT_LT(norm_err(to_host(dnu, nu.size()), nu), 1e-5);
  EXPECT_LT(norm_err(to_host(dnx, nx.size()), nx), 1e-5);
  EXPECT_LT(norm_err(to_host_bf16(dxn, x.size()), xn_ref), kBf16Budget);
  // Plain add, and the norms alone.
  cu::add_residual(dx.get(), du.get(), n, d, nullptr, nullptr, nullptr, nullptr, 1e-5f);
  cpu::add_inplace(xr.data(), u.data(), n * d);
  EXPECT_LT(norm_err(to_host(dx, x.size()), xr), 1e-6);
  auto dl2 = poisoned<float>(nu.size());
  cu::row_l2_norms(du.get(), n, d, dl2.get());
  EXPECT_LT(norm_err(to_host(dl2, nu.size()), nu), 1e-5);
  // Block delta: 1 - cos(a, b).
  auto a = random_floats(static_cast<size_t>(n * d), 12), b = a;
  for (size_t i = 0; i < b.size(); ++i) b[i] += 0.01f * static_cast<float>(i % 7) - 0.03f;
  std::vector<float> ref(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double p = a[static_cast<size_t>(r * d + j)], q = b[static_cast<size_t>(r * d + j)];
      ab += p * q;
      aa += p * p;
      bb += q * q;
    }
    ref[static_cast<size_t>(r)] = static_cast<float>(1.0 - ab / std::sqrt(aa * bb));
  }
  auto da = to_device(a), dbb = to_device(b);
  auto dd = poisoned<float>(ref.size());
  cu::block_delta(da.get(), dbb.get(), n, d, dd.get());
  EXPECT_LT(norm_err(to_host(dd, ref.size()), ref), 1e-4);
}

TEST(CudaOps, EmbedGatherScatterSetBytes) {
  DASHLM_REQUIRE_CUDA();
  const int64_t vocab = 301, d = 77, n = 50;
  auto table = round_bf16(random_floats(static_cast<size_t>(vocab * d), 13));
  std::vector<int32_t> toks(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) toks[static_cast<size_t>(i)] = static_cast<int32_t>((i * 37 + 5) % vocab);
  auto dt = to_device(to_bf16_bits(table));
  auto dtok = to_device(toks);
  auto dx = poisoned<float>(static_cast<size_t>(n * d));
  cu::embed_rows(dt.get(), vocab, dtok.get(), n, d, 2.5f, dx.get());
  auto x = to_host(dx, static_cast<size_t>(n * d));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j)
      ASSERT_EQ(x[static_cast<size_t>(i * d + j)], table[static_cast<size_t>(toks[static_cast<size_t>(i)] * d + j)] * 2.5f);
  // gather then scatter back into a poisoned buffer: the listed rows round-trip exactly.
  std::vector<int32_t> idx = {3, 0, 49, 17, 18, 22};
  auto didx = to_device(idx);
  auto dg = poisoned<float>(idx.size() * static_cast<size_t>(d));
  cu::gather_rows(dx.get(), didx.get(), static_cast<int64_t>(idx.size()), d, dg.get());
  auto g = to_host(dg, idx.size() * static_cast<size_t>(d));
  std::vector<float> gref(g.size());
  cpu::gather_rows(x.data(), idx.data(), static_cast<int64_t>(idx.size()), d, gref.data());
  EXPECT_EQ(g, gref);
  auto ds = to_device(x);
  cu::scale_inplace(ds.get(), 0.f, n * d);
  cu::scatter_rows(dg.get(), didx.get(), static_cast<int64_t>(idx.size()), d, ds.get());
  auto s = to_host(ds, x.size());
  std::vector<float> sref(x.size(), 0.f);
  cpu::scatter_rows(gref.data(), idx.data(), static_cast<int64_t>(idx.size()), d, sref.data());
  EXPECT_EQ(s, sref);
  std::vector<uint8_t> mask(100, 1);
  auto dm = to_device(mask);
  cu::set_bytes_at(dm.get(), didx.get(), static_cast<int64_t>(idx.size()), 0);
  for (int32_t i : idx) mask[static_cast<size_t>(i)] = 0;
  EXPECT_EQ(to_host(dm, mask.size()), mask);
  // add_inplace / f32<->bf16
  auto y = random_floats(1000, 14), z = random_floats(1000, 15);
  auto dy = to_device(y), dz = to_device(z);
  cu::add_inplace(dy.get(), dz.get(), 1000);
  cpu::add_inplace(y.data(), z.data(), 1000);
  EXPECT_LT(norm_err(to_host(dy, 1000), y), 1e-7);
  auto db16 = poisoned<uint16_t>(1000);
  cu::f32_to_bf16(dy.get(), db16.get(), 1000);
  auto back = poisoned<float>(1000);
  cu::bf16_to_f32(db16.get(), back.get(), 1000);
  EXPECT_EQ(to_host(back, 1000), round_bf16(y));
}

TEST(CudaOps, GemmMatchesReference) {
  DASHLM_REQUIRE_CUDA();
  struct Case { int64_t m, n, k, ldy; };
  for (const Case& c : {Case{1, 64, 64, 0}, Case{7, 1000, 320, 0}, Case{129, 515, 1000, 0}, Case{300, 256, 2048, 300},
                        Case{33, 17, 35, 0}, Case{5000, 128, 64, 0}}) {
    auto x = round_bf16(random_floats(static_cast<size_t>(c.m * c.k), 16));
    auto w = round_bf16(random_floats(static_cast<size_t>(c.n * c.k), 17));
    const int64_t ldy = c.ldy ? c.ldy : c.n;
    std::vector<float> ref(static_cast<size_t>(c.m * c.n));
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        double s = 0;
        for (int64_t t = 0; t < c.k; ++t) s += static_cast<double>(x[static_cast<size_t>(i * c.k + t)]) * w[static_cast<size_t>(j * c.k + t)];
        ref[static_cast<size_t>(i * c.n + j)] = static_cast<float>(s);
      }
    auto dx = to_device(to_bf16_bits(x)), dw = to_device(to_bf16_bits(w));
    auto yf = poisoned<float>(static_cast<size_t>(c.m * ldy));
    auto yb = poisoned<uint16_t>(static_cast<size_t>(c.m * ldy));
    cu::gemm(dx.get(), dw.get(), c.m, c.n, c.k, yf.get(), c.ldy);
    cu::gemm(dx.get(), dw.get(), c.m, c.n, c.k, yb.get(), c.ldy);
    auto gf = to_host(yf, static_cast<size_t>(c.m * ldy));
    auto gb = to_host_bf16(yb, static_cast<size_t>(c.m * ldy));
    std::vector<float> df(ref.size()), dbf(ref.size());
    for (int64_t i = 0; i < c.m; ++i)
      for (int64_t j = 0; j < c.n; ++j) {
        df[static_cast<size_t>(i * c.n + j)] = gf[static_cast<size_t>(i * ldy + j)];
        dbf[static_cast<size_t>(i * c.n + j)] = gb[static_cast<size_t>(i * ldy + j)];
      }
    EXPECT_LT(norm_err(df, ref), 1e-4) << c.m << "x" << c.n << "x" << c.k;
    EXPECT_LT(norm_err(dbf, ref), kBf16Budget) << c.m << "x" << c.n << "x" << c.k;
  }
}

namespace {

struct AttnCase {
  const char* name;
  int n_head, n_head_kv, hd;
  int64_t n_kv;        // cache slots
  int64_t n_q;         // queries (<= n_kv)
  bool subset;         // random ascending subset of positions (else the last n_q positions)
  int window;
  double invalid;      // fraction of slots marked invalid
  bool force_simple;
};

// dense: through cu::attention_dense (cuDNN) instead of our own kernel, same oracle.
void run_attention_case(const AttnCase& c, bool dense = false) {
  SCOPED_TRACE(c.name);
  const int64_t qs = int64_t{c.n_head} * c.hd, ks = int64_t{c.n_head_kv} * c.hd;
  std::mt19937 rng(static_cast<uint32_t>(c.n_kv * 131 + c.hd));
  std::vector<int32_t> pos;
  if (c.subset) {
    std::vector<int32_t> all(static_cast<size_t>(c.n_kv));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end() - 1, rng);
    pos.assign(all.begin(), all.begin() + c.n_q - 1);
    pos.push_back(static_cast<int32_t>(c.n_kv - 1));  // the last slot is always a query (as in DASH)
    std::sort(pos.begin(), pos.end());
  } else {
    for (int64_t i = c.n_kv - c.n_q; i < c.n_kv; ++i) pos.push_back(static_cast<int32_t>(i));
  }
  auto q = round_bf16(random_floats(static_cast<size_t>(c.n_q * qs), 21, -2, 2));
  auto k = round_bf16(random_floats(static_cast<size_t>(c.n_kv * ks), 22, -2, 2));
  auto v = round_bf16(random_floats(static_cast<size_t>(c.n_kv * ks), 23, -1, 1));
  std::vector<uint8_t> valid(static_cast<size_t>(c.n_kv), 1);
  if (c.invalid > 0) {
    std::bernoulli_distribution bd(c.invalid);
    for (auto& b : valid) b = bd(rng) ? 0 : 1;
    for (int64_t j = 0; j < std::min<int64_t>(5, c.n_kv); ++j) valid[static_cast<size_t>(j)] = 0;  // early rows see nothing
  }
  cpu::AttentionParams cp;
  cp.n_head = c.n_head;
  cp.n_head_kv = c.n_head_kv;
  cp.head_dim = c.hd;
  cp.scale = 1.f / std::sqrt(static_cast<float>(c.hd));
  cp.window = c.window;
  const uint8_t* vmask = c.invalid > 0 ? valid.data() : nullptr;
  std::vector<float> ref(static_cast<size_t>(c.n_q * qs));
  cpu::attention(q.data(), pos.data(), c.n_q, k.data(), v.data(), c.n_kv, vmask, cp, ref.data());

  auto dq = to_device(to_bf16_bits(q)), dk = to_device(to_bf16_bits(k)), dv = to_device(to_bf16_bits(v));
  auto dpos = to_device(pos);
  auto dvalid = to_device(valid);
  auto out = poisoned<uint16_t>(ref.size());
  cu::AttentionParams gp;
  gp.n_head = c.n_head;
  gp.n_head_kv = c.n_head_kv;
  gp.head_dim = c.hd;
  gp.scale = cp.scale;
  gp.window = c.window;
  if (dense && c.subset) {
    ASSERT_TRUE(cu::attention_subset(dq.get(), dpos.get(), pos.data(), c.n_q, dk.get(), dv.get(), c.n_kv, gp, out.get()))
        << "cuDNN rejected the case";
  } else if (dense) {
    ASSERT_TRUE(cu::attention_dense(dq.get(), c.n_q, dk.get(), dv.get(), c.n_kv, gp, out.get())) << "cuDNN rejected the case";
  } else {
    cu::attention(dq.get(), dpos.get(), c.n_q, dk.get(), dv.get(), c.n_kv, vmask ? dvalid.get() : nullptr, gp, out.get(),
                  c.force_simple);
  }
  const auto got = to_host_bf16(out, ref.size());
  EXPECT_LT(norm_err(got, ref), kBf16Budget);
  // Rows that see no key must be exactly zero.
  if (vmask) {
    for (int64_t i = 0; i < c.n_q && pos[static_cast<size_t>(i)] < 5; ++i)
      for (int64_t j = 0; j < qs; ++j) ASSERT_EQ(got[static_cast<size_t>(i * qs + j)], 0.f);
  }

  // Attention received from the last few rows.
  const int64_t r = std::min<int64_t>(5, c.n_q);
  std::vector<float> rref(static_cast<size_t>(c.n_kv));
  cpu::attention_received(q.data() + (c.n_q - r) * qs, pos.data() + (c.n_q - r), r, k.data(), c.n_kv, vmask, cp, rref.data());
  auto drecv = poisoned<float>(static_cast<size_t>(c.n_kv));
  cu::attention_received(dq.get() + (c.n_q - r) * qs, dpos.get() + (c.n_q - r), r, dk.get(), c.n_kv, vmask ? dvalid.get() : nullptr, gp,
                         drecv.get());
  EXPECT_LT(norm_err(to_host(drecv, rref.size()), rref), 1e-3);
}

}  // namespace

TEST(CudaAttention, FullCausal) {
  DASHLM_REQUIRE_CUDA();
  run_attention_case({"hd64 mha", 4, 4, 64, 300, 300, false, 0, 0, false});
  run_attention_case({"hd128 gqa4", 8, 2, 128, 517, 517, false, 0, 0, false});
  run_attention_case({"hd256 gqa2", 2, 1, 256, 200, 200, false, 0, 0, false});
  run_attention_case({"hd128 long", 4, 1, 128, 2100, 2100, false, 0, 0, false});
  run_attention_case({"hd128 one row", 4, 2, 128, 333, 1, false, 0, 0, false});
}

TEST(CudaAttention, QueriesAfterACachedPrefix) {
  DASHLM_REQUIRE_CUDA();
  run_attention_case({"hd64 tail", 4, 2, 64, 700, 90, false, 0, 0, false});
  run_attention_case({"hd128 tail", 4, 4, 128, 1000, 129, false, 0, 0, false});
}

TEST(CudaAttention, SlidingWindow) {
  DASHLM_REQUIRE_CUDA();
  run_attention_case({"hd128 window", 4, 2, 128, 400, 400, false, 100, 0, false});
  run_attention_case({"hd64 window 7", 2, 1, 64, 300, 300, false, 7, 0, false});
  run_attention_case({"hd256 window", 2, 2, 256, 333, 333, false, 64, 0, false});
}

TEST(CudaAttention, QuerySubsetsWithPositions) {
  DASHLM_REQUIRE_CUDA();
  run_attention_case({"hd128 subset", 8, 2, 128, 1000, 333, true, 0, 0, false});
  run_attention_case({"hd64 subset window", 4, 1, 64, 800, 150, true, 50, 0, false});
  run_attention_case({"hd256 subset", 2, 1, 256, 500, 77, true, 0, 0, false});
}

TEST(CudaAttention, ValidityMask) {
  DASHLM_REQUIRE_CUDA();
  run_attention_case({"hd128 holes", 4, 2, 128, 600, 600, false, 0, 0.3, false});
  run_attention_case({"hd64 subset holes", 4, 4, 64, 900, 300, true, 0, 0.5, false});
  run_attention_case({"hd256 holes window", 2, 1, 256, 300, 300, false, 40, 0.3, false});
}

TEST(CudaAttention, OtherHeadDimsAndSimpleKernel) {
  DASHLM_REQUIRE_CUDA();
  run_attention_case({"hd8", 8, 4, 8, 200, 200, false, 0, 0, false});
  run_attention_case({"hd96 subset holes", 3, 1, 96, 300, 100, true, 0, 0.2, false});
  run_attention_case({"hd128 simple", 4, 2, 128, 400, 400, false, 30, 0.1, true});
  run_attention_case({"hd256 simple subset", 2, 1, 256, 300, 50, true, 0, 0, true});
}

// The dense case through cuDNN's fused attention, against the same CPU oracle: full causal and
// queries after a cached prefix (bottom-right causal), head dims 64/128/256, GQA, odd lengths.
TEST(CudaAttention, DenseThroughCudnn) {
  DASHLM_REQUIRE_CUDNN();
  run_attention_case({"cudnn hd64 mha", 4, 4, 64, 300, 300, false, 0, 0, false}, true);
  run_attention_case({"cudnn hd128 gqa4", 8, 2, 128, 517, 517, false, 0, 0, false}, true);
  run_attention_case({"cudnn hd256 gqa2", 2, 1, 256, 200, 200, false, 0, 0, false}, true);
  run_attention_case({"cudnn hd128 long", 4, 1, 128, 2100, 2100, false, 0, 0, false}, true);
  run_attention_case({"cudnn hd64 tail", 4, 2, 64, 700, 90, false, 0, 0, false}, true);
  run_attention_case({"cudnn hd128 tail", 4, 4, 128, 1000, 129, false, 0, 0, false}, true);
  // Cases it must refuse (the caller then runs our kernel): a sliding window, more queries than keys.
  AttnCase w{"window", 2, 1, 64, 100, 100, false, 16, 0, false};
  cu::AttentionParams gp;
  gp.n_head = w.n_head;
  gp.n_head_kv = w.n_head_kv;
  gp.head_dim = w.hd;
  gp.window = w.window;
  auto buf = poisoned<uint16_t>(static_cast<size_t>(w.n_kv * w.n_head * w.hd));
  EXPECT_FALSE(cu::attention_dense(buf.get(), w.n_q, buf.get(), buf.get(), w.n_kv, gp, buf.get()));
  gp.window = 0;
  EXPECT_FALSE(cu::attention_dense(buf.get(), w.n_kv + 1, buf.get(), buf.get(), w.n_kv, gp, buf.get()));
}

// DASH's retain case through cuDNN (query blocks against the keys before them) and our kernel's
// split mode (the rest), merged: subsets with and without position 0, partial last blocks, GQA.
TEST(CudaAttention, SubsetThroughCudnn) {
  DASHLM_REQUIRE_CUDNN();
  run_attention_case({"cudnn subset hd128 gqa4", 8, 2, 128, 1000, 333, true, 0, 0, false}, true);
  run_attention_case({"cudnn subset hd64", 4, 1, 64, 2000, 700, true, 0, 0, false}, true);
  run_attention_case({"cudnn subset hd256", 2, 1, 256, 500, 77, true, 0, 0, false}, true);
  run_attention_case({"cudnn subset one block", 4, 4, 128, 300, 128, true, 0, 0, false}, true);
}

// Split mode alone against the CPU: each row attends to the keys from its block's first position.
TEST(CudaAttention, TailAndMerge) {
  DASHLM_REQUIRE_CUDA();
  const int H = 4, HKV = 2, HD = 128, block = 128;
  const int64_t n_kv = 900, n_q = 300;
  std::mt19937 rng(5);
  std::vector<int32_t> all(static_cast<size_t>(n_kv));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> pos(all.begin(), all.begin() + n_q);
  std::sort(pos.begin(), pos.end());
  auto q = round_bf16(random_floats(static_cast<size_t>(n_q * H * HD), 31, -2, 2));
  auto k = round_bf16(random_floats(static_cast<size_t>(n_kv * HKV * HD), 32, -2, 2));
  auto v = round_bf16(random_floats(static_cast<size_t>(n_kv * HKV * HD), 33, -1, 1));
  cpu::AttentionParams cp;
  cp.n_head = H;
  cp.n_head_kv = HKV;
  cp.head_dim = HD;
  cp.scale = 1.f / std::sqrt(static_cast<float>(HD));
  // Reference: per row, keys [first position of its block, own position] (the others invalid).
  std::vector<float> ref(q.size());
  for (int64_t i = 0; i < n_q; ++i) {
    std::vector<uint8_t> valid(static_cast<size_t>(n_kv), 0);
    for (int64_t j = pos[static_cast<size_t>((i / block) * block)]; j < n_kv; ++j) valid[static_cast<size_t>(j)] = 1;
    cpu::attention(q.data() + i * H * HD, pos.data() + i, 1, k.data(), v.data(), n_kv, valid.data(), cp, ref.data() + i * H * HD);
  }
  auto dq = to_device(to_bf16_bits(q)), dk = to_device(to_bf16_bits(k)), dv = to_device(to_bf16_bits(v));
  auto dpos = to_device(pos);
  auto out = poisoned<uint16_t>(ref.size());
  auto lse = poisoned<float>(static_cast<size_t>(n_q * H));
  cu::AttentionParams gp;
  gp.n_head = H;
  gp.n_head_kv = HKV;
  gp.head_dim = HD;
  gp.scale = cp.scale;
  cu::attention_tail(dq.get(), dpos.get(), n_q, dk.get(), dv.get(), n_kv, gp, block, out.get(), lse.get());
  EXPECT_LT(norm_err(to_host_bf16(out, ref.size()), ref), kBf16Budget);
  // The log-sum-exp of row 5, head 0 (keys pos[0] .. pos[5]), in float64.
  const auto l = to_host(lse, static_cast<size_t>(n_q * H));
  const int64_t row = 5;
  double mx = -INFINITY, sum = 0;
  std::vector<double> sc;
  for (int64_t j = pos[0]; j <= pos[static_cast<size_t>(row)]; ++j) {
    double d = 0;
    for (int e = 0; e < HD; ++e)
      d += static_cast<double>(q[static_cast<size_t>(row * H * HD + e)]) * k[static_cast<size_t>(j * HKV * HD + e)];
    sc.push_back(d * cp.scale);
    mx = std::max(mx, d * cp.scale);
  }
  for (double x : sc) sum += std::exp(x - mx);
  EXPECT_NEAR(l[static_cast<size_t>(row * H)], mx + std::log(sum), 2e-3 * std::max(1.0, std::abs(mx)));
  // Merging with a part of -inf weight everywhere leaves the output as it is.
  const int64_t nb = (n_q + block - 1) / block;
  auto part = to_device(std::vector<uint16_t>(static_cast<size_t>(nb * block * H * HD), 0));
  auto lse_part = to_device(std::vector<float>(static_cast<size_t>(nb * block * H), -INFINITY));
  const auto before = to_host_bf16(out, ref.size());
  cu::attention_merge(out.get(), lse.get(), part.get(), lse_part.get(), dpos.get(), n_q, H, HD, block);
  EXPECT_EQ(to_host_bf16(out, ref.size()), before);
}

// DASH's topk decision on the device against the host policy on the same scores: many ties
// (scores from a few values), protected tokens, keep fractions that round.
TEST(CudaOps, TopkHaltFlagsMatchHostPolicy) {
  DASHLM_REQUIRE_CUDA();
  for (int64_t n : {1L, 7L, 300L, 4099L, 70000L}) {
    for (double keep : {1.0 / 3.0, 0.5, 1.0}) {
      SCOPED_TRACE("n " + std::to_string(n) + " keep " + std::to_string(keep));
      std::mt19937 rng(static_cast<uint32_t>(n * 7 + static_cast<int64_t>(keep * 100)));
      std::vector<float> score(static_cast<size_t>(n));
      for (float& s : score) s = static_cast<float>(rng() % 17) * 0.25f;
      HaltingConfig hc;
      hc.policy = "topk";
      hc.halt_layer = 1;
      hc.keep = keep;
      const std::vector<uint8_t> eligible = halting_eligibility(hc, n);
      auto policy = make_halting_policy(hc, 4);
      policy->begin(n, eligible);
      std::vector<int32_t> active(static_cast<size_t>(n));
      std::iota(active.begin(), active.end(), 0);
      const std::vector<int32_t> want = policy->observe(1, active, score, {});

      auto d_score = to_device(score);
      auto d_elig = to_device(eligible);
      auto d_halt = poisoned<uint8_t>(static_cast<size_t>(n));
      int64_t n_elig = 0;
      for (uint8_t e : eligible) n_elig += e;
      cu::topk_halt_flags(d_score.get(), d_elig.get(), n, halting_keep_count(keep, n_elig), d_halt.get());
      const auto halt = to_host(d_halt, static_cast<size_t>(n));
      std::vector<int32_t> got;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_LE(halt[static_cast<size_t>(i)], 1);
        if (halt[static_cast<size_t>(i)]) got.push_back(static_cast<int32_t>(i));
      }
      EXPECT_EQ(got, want);
    }
  }
}
