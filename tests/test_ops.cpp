// CPU ops against plain reference implementations written out in the test.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "backends/cpu/gemm.h"
#include "backends/cpu/ops.h"
#include "backends/cpu/quants.h"
#include "gemm_levels.h"

using namespace dashlm;
using namespace dashlm::cpu;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Reference: causal attention by position with GQA, optional window and key mask.
std::vector<float> attention_ref(const std::vector<float>& q, const std::vector<int32_t>& qpos, const std::vector<float>& k,
                                 const std::vector<float>& v, int64_t n_kv, const std::vector<uint8_t>* valid,
                                 const AttentionParams& p) {
  const int64_t hd = p.head_dim, qs = int64_t{p.n_head} * hd, ks = int64_t{p.n_head_kv} * hd;
  std::vector<float> out(qpos.size() * static_cast<size_t>(qs));
  for (size_t i = 0; i < qpos.size(); ++i) {
    for (int h = 0; h < p.n_head; ++h) {
      const int kvh = h / (p.n_head / p.n_head_kv);
      std::vector<double> w(static_cast<size_t>(n_kv), 0.0);
      double mx = -1e300;
      bool any = false;
      for (int64_t j = 0; j < n_kv; ++j) {
        const bool vis = j <= qpos[i] && (p.window == 0 || qpos[i] - j < p.window) && (!valid || (*valid)[static_cast<size_t>(j)]);
        if (!vis) continue;
        double s = 0;
        for (int64_t d = 0; d < hd; ++d) s += double(q[i * qs + h * hd + d]) * k[j * ks + kvh * hd + d];
        w[static_cast<size_t>(j)] = s * p.scale;
        mx = std::max(mx, w[static_cast<size_t>(j)]);
        any = true;
      }
      double sum = 0;
      for (int64_t j = 0; j < n_kv; ++j) {
        const bool vis = j <= qpos[i] && (p.window == 0 || qpos[i] - j < p.window) && (!valid || (*valid)[static_cast<size_t>(j)]);
        w[static_cast<size_t>(j)] = vis ? std::exp(w[static_cast<size_t>(j)] - mx) : 0.0;
        sum += w[static_cast<size_t>(j)];
      }
      for (int64_t d = 0; d < hd; ++d) {
        double o = 0;
        for (int64_t j = 0; j < n_kv && any; ++j) o += w[static_cast<size_t>(j)] / sum * v[j * ks + kvh * hd + d];
        out[i * qs + h * hd + d] = static_cast<float>(o);
      }
    }
  }
  return out;
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], tol) << "at " << i;
}

}  // namespace

TEST(Ops, MatmulF32MatchesReference) {
  for (int64_t m : {1, 3, 37}) {
    const int64_t in = 70, out = 45;
    auto w = randn(static_cast<size_t>(in * out), 1), x = randn(static_cast<size_t>(m * in), 2), b = randn(out, 3);
    std::vector<float> y(static_cast<size_t>(m * out));
    matmul({DType::F32, w.data(), in, out}, x.data(), m, y.data(), b.data());
    for (int64_t i = 0; i < m; ++i)
      for (int64_t r = 0; r < out; ++r) {
        double s = b[static_cast<size_t>(r)];
        for (int64_t c = 0; c < in; ++c) s += double(x[i * in + c]) * w[r * in + c];
        ASSERT_NEAR(y[i * out + r], s, 1e-4);
      }
  }
}

TEST(Ops, MatmulF16SmallAndLargeBatchAgree) {
  const int64_t in = 64, out = 33;
  auto wf = randn(static_cast<size_t>(in * out), 4);
  std::vector<uint16_t> wh(wf.size());
  for (size_t i = 0; i < wf.size(); ++i) wh[i] = fp32_to_fp16(wf[i]);
  auto x = randn(static_cast<size_t>(8 * in), 5);
  std::vector<float> y_all(static_cast<size_t>(8 * out)), y_one(static_cast<size_t>(out));
  matmul({DType::F16, wh.data(), in, out}, x.data(), 8, y_all.data());
  for (int64_t i = 0; i < 8; ++i) {
    matmul({DType::F16, wh.data(), in, out}, x.data() + i * in, 1, y_one.data());  // row path
    for (int64_t r = 0; r < out; ++r) ASSERT_NEAR(y_one[static_cast<size_t>(r)], y_all[static_cast<size_t>(i * out + r)], 1e-4);
  }
}

TEST(Ops, RmsNorm) {
  std::vector<float> x{1.f, -2.f, 3.f, 4.f}, w{1.f, 2.f, 0.5f, 1.f}, y(4);
  rmsnorm(x.data(), w.data(), y.data(), 1, 4, 0.f);
  const float r = std::sqrt((1.f + 4.f + 9.f + 16.f) / 4.f);
  EXPECT_NEAR(y[0], 1.f / r, 1e-6);
  EXPECT_NEAR(y[1], -4.f / r, 1e-6);
  EXPECT_NEAR(y[2], 1.5f / r, 1e-6);
  EXPECT_NEAR(y[3], 4.f / r, 1e-6);
}

// Rows longer than the 16 running sums of the squares, with a tail (1000 = 62 x 16 + 8), against a
// sum in long double; row_l2_norms takes the same sums.
TEST(Ops, RmsNormLongRows) {
  const int64_t n = 3, dim = 1000;
  auto x = randn(n * dim, 11);
  for (int64_t j = 0; j < dim; j += 97) x[static_cast<size_t>(j)] *= 300.f;  // a few large values
  auto w = randn(dim, 12);
  std::vector<float> y(x.size()), norms(n);
  rmsnorm(x.data(), w.data(), y.data(), n, dim, 1e-6f);
  row_l2_norms(x.data(), n, dim, norms.data());
  for (int64_t r = 0; r < n; ++r) {
    long double ss = 0;
    for (int64_t j = 0; j < dim; ++j) ss += static_cast<long double>(x[static_cast<size_t>(r * dim + j)]) * x[static_cast<size_t>(r * dim + j)];
    EXPECT_NEAR(norms[static_cast<size_t>(r)], static_cast<double>(std::sqrt(ss)), 1e-6 * static_cast<double>(std::sqrt(ss)));
    const double inv = static_cast<double>(1.0L / std::sqrt(ss / dim + 1e-6L));
    for (int64_t j = 0; j < dim; ++j) {
      const size_t i = static_cast<size_t>(r * dim + j);
      const double want = static_cast<double>(x[i]) * inv * w[static_cast<size_t>(j)];
      ASSERT_NEAR(y[i], want, 1e-6 * std::max(1.0, std::abs(want))) << "row " << r << ", value " << j;
    }
  }
}

// Angles computed once and passed in (the engine shares them among layers) rotate as rope() from
// positions does and as the formula says, for both pair layouts, a position scale and a partial
// rotation (n_rot < head_dim: the rest of each head is left alone).
TEST(Ops, RopeFromSharedAnglesEqualsFromPositions) {
  const int hd = 16, heads = 3;
  const int64_t n = 5;
  for (bool neox : {false, true}) {
    RopeParams p;
    p.head_dim = hd;
    p.n_rot = 12;
    p.freq_base = 10000.f;
    p.freq_scale = 0.5f;
    p.neox = neox;
    std::vector<int32_t> pos{3, 4, 9, 100, 4095};
    auto a = randn(n * heads * hd, 13);
    auto b = a;
    rope(a.data(), n, heads, heads * hd, pos.data(), p);
    std::vector<float> cs(static_cast<size_t>(n * p.n_rot));
    rope_angles(pos.data(), n, p, cs.data());
    const auto ref = b;
    rope(b.data(), n, heads, heads * hd, cs.data(), p);
    EXPECT_EQ(a, b);
    const int half = p.n_rot / 2;
    for (int64_t t = 0; t < n; ++t)
      for (int h = 0; h < heads; ++h) {
        const size_t row = static_cast<size_t>((t * heads + h) * hd);
        for (int i = 0; i < half; ++i) {
          const double th = pos[static_cast<size_t>(t)] * 0.5 * std::pow(10000.0, -2.0 * i / p.n_rot);
          const size_t ia = row + static_cast<size_t>(neox ? i : 2 * i), ib = row + static_cast<size_t>(neox ? i + half : 2 * i + 1);
          EXPECT_NEAR(b[ia], ref[ia] * std::cos(th) - ref[ib] * std::sin(th), 1e-5);
          EXPECT_NEAR(b[ib], ref[ia] * std::sin(th) + ref[ib] * std::cos(th), 1e-5);
        }
        for (int j = p.n_rot; j < hd; ++j) EXPECT_EQ(b[row + static_cast<size_t>(j)], ref[row + static_cast<size_t>(j)]);  // not rotated
      }
  }
}

TEST(Ops, RopeNormalAndNeoxPairs) {
  const int hd = 8;
  for (bool neox : {false, true}) {
    auto x = randn(2 * hd, 6);
    auto ref = x;
    std::vector<int32_t> pos{0, 7};
    RopeParams p;
    p.head_dim = hd;
    p.n_rot = hd;
    p.freq_base = 10000.f;
    p.neox = neox;
    rope(x.data(), 1, 2, 2 * hd, pos.data() + 1, p);  // one token, two heads, position 7
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const double th = 7.0 * std::pow(10000.0, -2.0 * i / hd);
        const int a = neox ? i : 2 * i, b = neox ? i + hd / 2 : 2 * i + 1;
        const float x0 = ref[static_cast<size_t>(h * hd + a)], x1 = ref[static_cast<size_t>(h * hd + b)];
        EXPECT_NEAR(x[static_cast<size_t>(h * hd + a)], x0 * std::cos(th) - x1 * std::sin(th), 1e-5);
        EXPECT_NEAR(x[static_cast<size_t>(h * hd + b)], x0 * std::sin(th) + x1 * std::cos(th), 1e-5);
      }
  }
}

TEST(Ops, AttentionMatchesReference) {
  // Awkward sizes: 70 queries (not a multiple of the block), GQA 6:2, head size 12.
  AttentionParams p{6, 2, 12, 0.3f, 0};
  const int64_t n = 70;
  auto q = randn(static_cast<size_t>(n * 6 * 12), 7), k = randn(static_cast<size_t>(n * 2 * 12), 8),
       v = randn(static_cast<size_t>(n * 2 * 12), 9);
  std::vector<int32_t> pos(n);
  for (int i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = i;
  for (int window : {0, 5}) {
    p.window = window;
    std::vector<float> out(q.size());
    attention(q.data(), pos.data(), n, k.data(), v.data(), n, nullptr, p, out.data());
    expect_close(out, attention_ref(q, pos, k, v, n, nullptr, p), 1e-4f);
  }
}

TEST(Ops, AttentionQuerySubsetAndKeyMask) {
  // Queries are a subset of the positions (as after halting), keys partly absent.
  AttentionParams p{4, 4, 16, 0.25f, 0};
  const int64_t n_kv = 90;
  std::vector<int32_t> pos{0, 3, 4, 40, 41, 77, 89};
  const auto nq = static_cast<int64_t>(pos.size());
  auto q = randn(static_cast<size_t>(nq * 64), 10), k = randn(static_cast<size_t>(n_kv * 64), 11), v = randn(static_cast<size_t>(n_kv * 64), 12);
  std::vector<uint8_t> valid(n_kv, 1);
  for (int64_t j = 1; j < n_kv; j += 3) valid[static_cast<size_t>(j)] = 0;
  std::vector<float> out(q.size());
  attention(q.data(), pos.data(), nq, k.data(), v.data(), n_kv, valid.data(), p, out.data());
  expect_close(out, attention_ref(q, pos, k, v, n_kv, &valid, p), 1e-4f);
}

// The gated MLP's activations at every kernel level against double precision: values across
// [-30, 30] (a length that leaves a partial vector), the range ends, +inf and NaN. The bound is
// a few float ulps (the vectorised exp is within 1-2 ulp) plus the rounding of exp's argument.
TEST(Ops, Activations) {
  std::vector<double> xs;
  for (int i = 0; i <= 6001; ++i) xs.push_back(-30.0 + 60.0 * i / 6001.0);
  for (double x : {-100.0, -88.5, -87.0, 87.0, 88.5, 100.0, 1e-20, -1e-20, 0.0}) xs.push_back(x);
  const auto n = static_cast<int64_t>(xs.size());
  std::vector<float> u(xs.size());
  for (size_t i = 0; i < u.size(); ++i) u[i] = 0.5f + static_cast<float>(i % 7) * 0.25f;
  const auto silu = [](double x) { return x / (1 + std::exp(-x)); };
  // 0.5 x (1 + tanh(v)) as x / (1 + exp(-2 v)): the same function, without the cancellation of
  // 1 + tanh(v) for very negative v (in double, tanh(-36) is -1 and the product 0).
  const auto gelu = [](double x) { return x / (1 + std::exp(-2 * 0.7978845608028654 * (x + 0.044715 * x * x * x))); };
  for (const GemmLevel level : test::runnable_levels()) {
    test::LevelGuard guard(level);
    for (int act = 0; act < 2; ++act) {
      std::vector<float> g(xs.size());
      for (size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>(xs[i]);
      if (act == 0) {
        silu_mul(g.data(), u.data(), n);
      } else {
        gelu_tanh_mul(g.data(), u.data(), n);
      }
      for (size_t i = 0; i < g.size(); ++i) {
        const double x = static_cast<double>(static_cast<float>(xs[i]));
        const double want = (act == 0 ? silu(x) : gelu(x)) * u[i];
        // The exponent's argument is rounded to float (a relative 6e-8, so an absolute error of
        // |arg| 6e-8 that exp turns into a relative one): the bound grows with |arg|.
        const double arg = act == 0 ? std::fabs(x) : 2 * 0.7978845608028654 * std::fabs(x + 0.044715 * x * x * x);
        ASSERT_NEAR(g[i], want, (4e-7 + 3e-7 * arg) * std::fabs(want) + 1e-30)
            << (act == 0 ? "silu" : "gelu") << " x=" << x << " level " << gemm_level_name(level);
      }
    }
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> g{inf, std::nanf("")}, g2 = g, one(2, 1.f);
    silu_mul(g.data(), one.data(), 2);
    gelu_tanh_mul(g2.data(), one.data(), 2);
    for (const auto& v : {g, g2}) {
      EXPECT_EQ(v[0], inf) << gemm_level_name(level);
      EXPECT_TRUE(std::isnan(v[1])) << gemm_level_name(level);
    }
  }
}

TEST(Ops, FlashAttentionAwkwardSizesAtEveryLevel) {
  // Keys in several tiles and a partial one (600 slots), a subset of query positions in blocks
  // that straddle tiles, sliding windows narrower and wider than a tile, invalid slots (scattered
  // and a whole run), GQA 6:2 with head size 24, at every kernel level this CPU can run.
  const GemmLevel saved = gemm_level();
  const int64_t n_kv = 600;
  std::vector<int32_t> pos;
  for (int32_t p = 0; p < n_kv; p += 1 + (p * 7) % 11) pos.push_back(p);
  pos.push_back(n_kv - 1);
  const auto nq = static_cast<int64_t>(pos.size());
  auto q = randn(static_cast<size_t>(nq * 6 * 24), 21), k = randn(static_cast<size_t>(n_kv * 2 * 24), 22),
       v = randn(static_cast<size_t>(n_kv * 2 * 24), 23);
  std::vector<uint8_t> valid(n_kv, 1);
  for (int64_t j = 5; j < n_kv; j += 7) valid[static_cast<size_t>(j)] = 0;
  for (int64_t j = 260; j < 520; ++j) valid[static_cast<size_t>(j)] = 0;  // more than a tile of holes
  for (int level = 0; level <= static_cast<int>(gemm_max_level()); ++level) {
    gemm_set_level(static_cast<GemmLevel>(level));
    for (int window : {0, 3, 100, 300}) {
      const std::vector<uint8_t>* masks[] = {nullptr, &valid};
      for (const std::vector<uint8_t>* mask : masks) {
        AttentionParams p{6, 2, 24, 0.4f, window};
        std::vector<float> out(q.size(), 123.f);
        attention(q.data(), pos.data(), nq, k.data(), v.data(), n_kv, mask ? mask->data() : nullptr, p, out.data());
        const auto ref = attention_ref(q, pos, k, v, n_kv, mask, p);
        for (size_t i = 0; i < out.size(); ++i) {
          ASSERT_NEAR(out[i], ref[i], 2e-5f) << gemm_level_name(static_cast<GemmLevel>(level)) << " window " << window
                                             << (mask ? " holes" : "") << " at " << i;
        }
      }
    }
  }
  gemm_set_level(saved);
}

namespace {

std::vector<uint16_t> to_f16(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = fp32_to_fp16(x[i]);
  return h;
}
std::vector<float> from_f16(const std::vector<uint16_t>& h) {
  std::vector<float> x(h.size());
  for (size_t i = 0; i < h.size(); ++i) x[i] = fp16_to_fp32(h[i]);
  return x;
}

}  // namespace

TEST(Ops, F16RowConversionsAgreeWithScalarAtEveryLevel) {
  // Lengths around the vector widths; normal, subnormal, tiny, huge, signed zero and infinite values.
  const GemmLevel saved = gemm_level();
  std::vector<float> x = randn(77, 31, 3.f);
  const float specials[] = {0.f, -0.f, 1e-6f, -3e-8f, 6.1e-5f, 65504.f, 65519.f, 65520.f, -1e6f, INFINITY, -INFINITY, 1.f / 3.f};
  for (size_t i = 0; i < std::size(specials); ++i) x[i * 5] = specials[i];
  for (int level = 0; level <= static_cast<int>(gemm_max_level()); ++level) {
    gemm_set_level(static_cast<GemmLevel>(level));
    for (int64_t n : {1, 7, 8, 9, 16, 17, 33, 77}) {
      std::vector<uint16_t> h(static_cast<size_t>(n));
      f32_to_f16_row(x.data(), h.data(), n);
      std::vector<float> back(static_cast<size_t>(n));
      f16_to_f32_row(h.data(), back.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(h[static_cast<size_t>(i)], fp32_to_fp16(x[static_cast<size_t>(i)])) << f16_conversion_name() << " n " << n << " at " << i;
        ASSERT_EQ(std::bit_cast<uint32_t>(back[static_cast<size_t>(i)]), std::bit_cast<uint32_t>(fp16_to_fp32(h[static_cast<size_t>(i)])))
            << f16_conversion_name() << " at " << i;
      }
    }
  }
  gemm_set_level(saved);
}

TEST(Ops, FlashAttentionF16CacheAndSplitsAtEveryLevel) {
  // An f16 cache gives the attention of its rounded keys and values; few queries over many keys
  // (decoding) take the split path with more threads than tasks; holes, windows and GQA as above.
  const GemmLevel saved = gemm_level();
  const int saved_threads = num_threads();
  const int64_t n_kv = 1500;
  for (const int hd : {24, 64}) {  // 64: decoding's few rows read the f16 tiles in place
    auto k = randn(static_cast<size_t>(n_kv * 2 * hd), 32), v = randn(static_cast<size_t>(n_kv * 2 * hd), 33);
    const std::vector<uint16_t> k16 = to_f16(k), v16 = to_f16(v);
    const std::vector<float> kr = from_f16(k16), vr = from_f16(v16);
    std::vector<uint8_t> valid(n_kv, 1);
    for (int64_t j = 2; j < n_kv; j += 3) valid[static_cast<size_t>(j)] = 0;
    for (int64_t j = 700; j < 1100; ++j) valid[static_cast<size_t>(j)] = 0;
    const std::vector<std::vector<int32_t>> query_sets = {{1499}, {3, 900, 1499}, {}};
    std::vector<int32_t> many;
    for (int32_t p = 0; p < n_kv; p += 1 + (p * 5) % 13) many.push_back(p);
    for (int threads : {1, 4, 7}) {
      set_num_threads(threads);
      for (int level = 0; level <= static_cast<int>(gemm_max_level()); ++level) {
        gemm_set_level(static_cast<GemmLevel>(level));
        for (const auto& qs0 : query_sets) {
          if (qs0.empty() && hd != 24) continue;  // many queries: the path of head dim 24
          const std::vector<int32_t>& pos = qs0.empty() ? many : qs0;
          const auto nq = static_cast<int64_t>(pos.size());
          auto q = randn(static_cast<size_t>(nq * 6 * hd), 34);
          for (int window : {0, 300}) {
            for (bool holes : {false, true}) {
              for (bool f16 : {false, true}) {
                AttentionParams p{6, 2, hd, 0.4f, window};
                std::vector<float> out(q.size(), 123.f);
                const KvRef kv = f16 ? KvRef{k16.data(), v16.data(), KvType::F16} : KvRef{k.data(), v.data(), KvType::F32};
                attention(q.data(), pos.data(), nq, kv, n_kv, holes ? valid.data() : nullptr, p, out.data());
                const auto ref = attention_ref(q, pos, f16 ? kr : k, f16 ? vr : v, n_kv, holes ? &valid : nullptr, p);
                for (size_t i = 0; i < out.size(); ++i) {
                  ASSERT_NEAR(out[i], ref[i], 2e-5f) << gemm_level_name(static_cast<GemmLevel>(level)) << " threads " << threads
                                                     << " queries " << nq << " window " << window << (holes ? " holes" : "")
                                                     << (f16 ? " f16" : "") << " head dim " << hd << " at " << i;
                }
              }
            }
          }
        }
      }
    }
  }
  set_num_threads(saved_threads);
  gemm_set_level(saved);
}

TEST(Ops, F16TileProductsInPlaceAtEveryLevel) {
  // attn_scores_f16 and attn_pv_f16 against float64 sums of the rounded values: every row count
  // up to 8, tile widths around the kernels' groups of 4 keys, head dims 32 to 256, keys read
  // through a slot list or in order, with the cache's row stride.
  const GemmLevel saved = gemm_level();
  for (int level = 0; level <= static_cast<int>(gemm_max_level()); ++level) {
    gemm_set_level(static_cast<GemmLevel>(level));
    for (const int64_t hd : {32, 64, 128, 256}) {
      const int64_t ldk = 3 * hd, n_slots = 600;  // cache rows; the slot list takes about half
      const std::vector<uint16_t> k16 = to_f16(randn(static_cast<size_t>(n_slots * ldk), 51));
      const std::vector<uint16_t> v16 = to_f16(randn(static_cast<size_t>(n_slots * ldk), 52));
      const std::vector<float> kf = from_f16(k16), vf = from_f16(v16);
      std::vector<int32_t> slots;
      for (int32_t j = 1; j < n_slots; j += 1 + j % 3) slots.push_back(j);
      ASSERT_GE(slots.size(), 256u);
      for (const int64_t rows : {1, 2, 3, 5, 7, 8}) {
        const int64_t ldq = hd + 8, lds = 260;
        const std::vector<float> q = randn(static_cast<size_t>(rows * ldq), 53);
        const std::vector<float> pw = randn(static_cast<size_t>(rows * lds), 54);
        for (const int64_t nt : {1, 3, 4, 5, 9, 256}) {
          for (const bool use_slots : {false, true}) {
            const int32_t* sl = use_slots ? slots.data() : nullptr;
            const uint16_t* kb = k16.data() + hd;  // the second head of each row
            const uint16_t* vb = v16.data() + hd;
            std::vector<float> s(static_cast<size_t>(rows * lds), -7.f);
            attn_scores_f16(rows, nt, hd, q.data(), ldq, kb, ldk, sl, s.data(), lds, 0.3f);
            std::vector<float> out(static_cast<size_t>(rows * hd), 0.5f), acc = out;
            attn_pv_f16(rows, nt, hd, pw.data(), lds, vb, ldk, sl, out.data(), hd, false);
            attn_pv_f16(rows, nt, hd, pw.data(), lds, vb, ldk, sl, acc.data(), hd, true);
            for (int64_t r = 0; r < rows; ++r) {
              for (int64_t j = 0; j < nt; ++j) {
                const int64_t row = (sl ? sl[j] : j) * ldk + hd;
                double ref = 0;
                for (int64_t d = 0; d < hd; ++d) ref += static_cast<double>(q[static_cast<size_t>(r * ldq + d)]) * kf[static_cast<size_t>(row + d)];
                ASSERT_NEAR(s[static_cast<size_t>(r * lds + j)], 0.3 * ref, 1e-4 * std::sqrt(static_cast<double>(hd)))
                    << gemm_level_name(static_cast<GemmLevel>(level)) << " hd " << hd << " rows " << rows << " nt " << nt;
              }
              for (int64_t d = 0; d < hd; ++d) {
                double ref = 0;
                for (int64_t j = 0; j < nt; ++j)
                  ref += static_cast<double>(pw[static_cast<size_t>(r * lds + j)]) * vf[static_cast<size_t>((sl ? sl[j] : j) * ldk + hd + d)];
                const double tol = 1e-4 * std::sqrt(static_cast<double>(nt));
                ASSERT_NEAR(out[static_cast<size_t>(r * hd + d)], ref, tol)
                    << gemm_level_name(static_cast<GemmLevel>(level)) << " hd " << hd << " rows " << rows << " nt " << nt;
                ASSERT_NEAR(acc[static_cast<size_t>(r * hd + d)], ref + 0.5, tol) << "accumulating";
              }
              // Scores past the tile are not written.
              for (int64_t j = nt; j < lds; ++j) ASSERT_EQ(s[static_cast<size_t>(r * lds + j)], -7.f);
            }
          }
        }
      }
    }
  }
  gemm_set_level(saved);
}

TEST(Ops, AttentionReceivedReadsAnF16Cache) {
  AttentionParams p{4, 2, 16, 0.25f, 0};
  const int64_t n_kv = 50;
  std::vector<int32_t> pos{10, 30, 49};
  auto q = randn(static_cast<size_t>(3 * 64), 41), k = randn(static_cast<size_t>(n_kv * 32), 42);
  const std::vector<uint16_t> k16 = to_f16(k);
  const std::vector<float> kr = from_f16(k16);
  std::vector<float> a(n_kv), b(n_kv);
  attention_received(q.data(), pos.data(), 3, kr.data(), n_kv, nullptr, p, a.data());
  attention_received(q.data(), pos.data(), 3, k16.data(), KvType::F16, n_kv, nullptr, p, b.data());
  expect_close(a, b, 1e-6f);
}
