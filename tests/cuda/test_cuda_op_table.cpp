// Every CUDA op of backends/cuda/cuda_ops.h against its CPU twin (backends/cpu/ops.h), or a float64
// reference where there is none, from one table of cases: each case names an op and its shapes,
// builds fresh random inputs (seeded by the case's name), runs the op on the device and the
// reference on the host, and reports per output the largest error and the elements that are
// not finite or were never written. One GoogleTest per case: CudaOpTable/OpCase.Matches/<name>.
//
// Every output buffer on the device is filled with 0xFF bytes before the op runs (NaN as float
// and as bf16) and has poisoned elements after it (and before it, for the misaligned cases):
// an element the op did not write stays NaN and is counted as bad, and a write outside the
// output shows as a changed guard element. Inputs sit in poisoned buffers too, so a read past
// an input's end brings NaN into the result. NaN never passes: a non-finite result element is
// always a failure, whatever the tolerance.
//
// The error of an output: max_i |got_i - ref_i| / max(|ref_i|, s). s is the RMS of the reference
// (Scale::Rms, the default): values near zero, where a sum cancels, are measured against the
// output's typical size rather than their own; s = 0 (Scale::Self) measures each value on its
// own. Attention outputs are softmax-weighted averages whose error is absolute (P is rounded to
// bf16 before P V: each weight off by up to 2^-8 of itself), so a value that cancels to near zero
// carries the error of its whole row: for them the error is the largest, over query rows and
// heads, of ||got - ref|| / ||ref|| over the head's values (Scale::PerHead), so that long rows,
// whose outputs are small, are held to the same relative budget as short ones.
// Tolerances, per output (the constants below):
//   exact (0)   copies, one IEEE add or multiply on both sides, conversions, flags
//   kF32        float32 results of float32 row and element ops: sums in another order (the
//               CPU sums squares in float64), rsqrtf / __expf / tanhf against libm (summing
//               rows of 8192 squares sequentially in float32 stays under 3e-6)
//   kF32Gemm    float32 results of bf16 GEMMs: the products are exact, the fp32 sums over up to
//               2048 of them run in the tensor cores' order against a float64 reference
//               (summing sequentially with every add truncated toward zero, a pessimistic
//               model, gives 2e-5 at k = 2048)
//   kF32Softmax attention received (float32 softmax with __expf over bf16 inputs, summed over
//               rows and heads with atomics; ~2e-6 expected)
//   kLse        log-sum-exp of attention_tail (exp2f / __log2f in the kernel; ~2e-7 expected)
//   kBf16       any bf16 result (rounding the output costs up to 2^-8 relative; attention
//               also rounds P to bf16 before P V: ~6e-3 expected per head)
//   kBf16Gemm   bf16 results of GEMMs: measured on an H200, 1.01e-2 at m 300, n 256, k 2048
//               (3.7e-3 at short k), more than rounding the output alone costs; cuBLASLt's
//               reduction for that shape (e.g. a split K with rounded partial sums) is the likely
//               cause, not examined: twice the bf16 budget
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backends/cpu/ops.h"
#include "cuda/cuda_test_util.h"

namespace dashlm::test {
namespace {

namespace cu = dashlm::cuda;
using F = std::vector<float>;
using D = std::vector<double>;
using I32 = std::vector<int32_t>;
using U8 = std::vector<uint8_t>;
using U16 = std::vector<uint16_t>;

constexpr double kExact = 0;
constexpr double kF32 = 1e-5;
constexpr double kF32Gemm = 1e-4;
constexpr double kF32Softmax = 1e-4;
constexpr double kLse = 1e-5;
constexpr double kBf16 = 1e-2;
constexpr double kBf16Gemm = 2e-2;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr size_t kGuard = 64;  // poisoned elements after every device array

// --- the result of a case ----------------------------------------------------------------------

struct Check {
  std::string what;  // which output
  double err = 0;    // see the top of the file
  double tol = 0;
  int64_t n = 0;     // elements compared
  int64_t bad = 0;   // not finite (never written: still NaN), or written outside the output
  std::string note;  // where the largest error is, what the bad elements are

  bool ok() const { return bad == 0 && err <= tol; }
};

struct Report {
  std::vector<Check> checks;
  std::string skip;  // non-empty: the case could not run here (a route that is not available)
};

enum class Scale { Rms, Self, PerHead };

// Scale::PerHead: segments of `seg` values (one head of one query row).
template <typename R>
Check compare(std::string what, const F& got, const std::vector<R>& ref, double tol, Scale scale = Scale::Rms,
              int64_t seg = 0) {
  Check c;
  c.what = std::move(what);
  c.tol = tol;
  c.n = static_cast<int64_t>(ref.size());
  if (got.size() != ref.size()) {
    c.bad = c.n + 1;
    c.note = "got " + std::to_string(got.size()) + " values for " + std::to_string(ref.size());
    return c;
  }
  double ss = 0;
  for (R r : ref) {
    if (!std::isfinite(static_cast<double>(r))) {
      c.bad = c.n + 1;
      c.note = "the reference is not finite";
      return c;
    }
    ss += static_cast<double>(r) * static_cast<double>(r);
  }
  const double floor = scale == Scale::Rms && !ref.empty() ? std::sqrt(ss / static_cast<double>(ref.size())) : 0.0;
  int64_t first_bad = -1, worst = -1;
  if (scale == Scale::PerHead) {
    if (seg <= 0 || ref.size() % static_cast<size_t>(seg) != 0) {
      c.bad = c.n + 1;
      c.note = "bad segment length";
      return c;
    }
    for (size_t s0 = 0; s0 < ref.size(); s0 += static_cast<size_t>(seg)) {
      double dd = 0, rr = 0;
      for (size_t i = s0; i < s0 + static_cast<size_t>(seg); ++i) {
        const double g = got[i], r = static_cast<double>(ref[i]);
        if (!std::isfinite(g)) {
          if (c.bad++ == 0) first_bad = static_cast<int64_t>(i);
          continue;
        }
        dd += (g - r) * (g - r);
        rr += r * r;
      }
      const double e = dd == 0 ? 0.0 : (rr > 0 ? std::sqrt(dd / rr) : INFINITY);
      if (e > c.err) {
        c.err = e;
        worst = static_cast<int64_t>(s0);
      }
    }
    if (worst >= 0) {
      c.note = "largest in the head of " + std::to_string(seg) + " values at [" + std::to_string(worst) + "]: row " +
               std::to_string(worst / seg);
    }
    if (first_bad >= 0) {
      c.note += (c.note.empty() ? "" : "; ") + std::to_string(c.bad) + " not finite (unwritten or NaN), first at [" +
                std::to_string(first_bad) + "]";
    }
    return c;
  }
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = static_cast<double>(ref[i]);
    if (!std::isfinite(g)) {
      if (c.bad++ == 0) first_bad = static_cast<int64_t>(i);
      continue;
    }
    const double d = std::fabs(g - r), den = std::max(std::fabs(r), floor);
    const double e = d == 0 ? 0.0 : (den > 0 ? d / den : INFINITY);
    if (e > c.err) {
      c.err = e;
      worst = static_cast<int64_t>(i);
    }
  }
  if (worst >= 0) {
    const auto w = static_cast<size_t>(worst);
    c.note = "largest at [" + std::to_string(worst) + "]: got " + std::to_string(got[w]) + ", want " +
             std::to_string(static_cast<double>(ref[w]));
  }
  if (first_bad >= 0) {
    c.note += (c.note.empty() ? "" : "; ") + std::to_string(c.bad) + " not finite (unwritten or NaN), first at [" +
              std::to_string(first_bad) + "]";
  }
  return c;
}

// Bit patterns that must match exactly: err is the number of elements that differ.
template <typename T>
Check compare_bits(std::string what, const std::vector<T>& got, const std::vector<T>& want) {
  Check c;
  c.what = std::move(what);
  c.n = static_cast<int64_t>(want.size());
  if (got.size() != want.size()) {
    c.bad = c.n + 1;
    return c;
  }
  int64_t first = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      if (first < 0) first = static_cast<int64_t>(i);
      c.err += 1;
    }
  }
  if (first >= 0) c.note = "first difference at [" + std::to_string(first) + "]";
  return c;
}

// Elements written outside the output (guards, padding, slots not listed) count as bad.
void add_outside(Check& c, int64_t outside, const char* where = "outside the output") {
  if (outside <= 0) return;
  c.bad += outside;
  c.note += (c.note.empty() ? "" : "; ") + std::to_string(outside) + " elements changed " + where;
}

// --- device arrays in poisoned buffers ---------------------------------------------------------

template <typename T>
bool is_poison(const T& v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  for (unsigned char x : b)
    if (x != 0xFF) return false;
  return true;
}

// n elements at element offset `off` of a buffer filled with 0xFF bytes, with kGuard more after
// them: anything the op writes outside [off, off + n) is caught.
template <typename T>
class Dev {
 public:
  explicit Dev(size_t n, size_t off = 0) : buf_(poisoned<T>(off + n + kGuard)), off_(off), n_(n) {}
  explicit Dev(const std::vector<T>& v, size_t off = 0) : Dev(v.size(), off) {
    if (n_) buf_.upload(v.data(), n_, off_);
  }
  T* get() const { return buf_.get() + off_; }
  size_t size() const { return n_; }
  // The n elements; *outside counts the elements around them that are no longer poisoned.
  std::vector<T> fetch(int64_t* outside) const {
    const std::vector<T> all = to_host(buf_, buf_.size());
    for (size_t i = 0; i < all.size(); ++i)
      if ((i < off_ || i >= off_ + n_) && !is_poison(all[i])) ++*outside;
    return std::vector<T>(all.begin() + static_cast<std::ptrdiff_t>(off_), all.begin() + static_cast<std::ptrdiff_t>(off_ + n_));
  }

 private:
  cu::DeviceBuffer<T> buf_;
  size_t off_, n_;
};

Dev<uint16_t> dev_bf16(const F& v, size_t off = 0) { return Dev<uint16_t>(to_bf16_bits(v), off); }

template <typename R>
Check check_f32(std::string what, const Dev<float>& d, const std::vector<R>& ref, double tol, Scale s = Scale::Rms) {
  int64_t outside = 0;
  const F got = d.fetch(&outside);
  Check c = compare(std::move(what), got, ref, tol, s);
  add_outside(c, outside);
  return c;
}
template <typename R>
Check check_bf16(std::string what, const Dev<uint16_t>& d, const std::vector<R>& ref, double tol, Scale s = Scale::Rms,
                 int64_t seg = 0) {
  int64_t outside = 0;
  const F got = from_bf16_bits(d.fetch(&outside));
  Check c = compare(std::move(what), got, ref, tol, s, seg);
  add_outside(c, outside);
  return c;
}
// An output the op was told not to produce (a null pointer): every element still poisoned.
template <typename T>
Check check_untouched(std::string what, const Dev<T>& d) {
  Check c;
  c.what = std::move(what);
  int64_t outside = 0;
  const std::vector<T> got = d.fetch(&outside);
  c.n = static_cast<int64_t>(got.size());
  int64_t inside = 0;
  for (const T& v : got) inside += is_poison(v) ? 0 : 1;
  add_outside(c, inside + outside, "in an output that was not asked for");
  return c;
}

// --- random inputs -----------------------------------------------------------------------------

uint32_t seed_of(const std::string& s) {  // FNV-1a: every case its own inputs, the same every run
  uint32_t h = 2166136261u;
  for (unsigned char ch : s) h = (h ^ ch) * 16777619u;
  return h;
}

class Rng {
 public:
  explicit Rng(uint32_t seed) : g_(seed) {}
  F uniform(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> u(lo, hi);
    F v(n);
    for (float& x : v) x = u(g_);
    return v;
  }
  F bf16(size_t n, float lo, float hi) { return round_bf16(uniform(n, lo, hi)); }
  int64_t below(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(g_); }
  bool chance(double p) { return std::bernoulli_distribution(p)(g_); }
  uint32_t bits() { return static_cast<uint32_t>(g_()); }
  // `count` distinct values of [0, range), in random order.
  I32 distinct(int64_t count, int64_t range) {
    I32 all(static_cast<size_t>(range));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), g_);
    all.resize(static_cast<size_t>(count));
    return all;
  }
  std::mt19937& engine() { return g_; }

 private:
  std::mt19937 g_;
};

// --- the cases ---------------------------------------------------------------------------------

struct Case {
  std::string name;    // the test's name: op, then shapes
  bool cudnn = false;  // the cuDNN route: skipped where cuDNN is not there
  std::function<Report(Rng&)> run;
};

// --- rmsnorm -----------------------------------------------------------------------------------

enum class RmsOut { Bf16, F32, F32InPlace };

Report run_rmsnorm(Rng& rng, RmsOut out, int64_t n, int64_t dim, bool weight, bool misalign) {
  const float eps = 1e-5f;
  const size_t sz = static_cast<size_t>(n * dim), off = misalign ? 1 : 0;
  const F x = rng.uniform(sz, -3, 3), w = rng.uniform(static_cast<size_t>(dim), 0.5f, 1.5f);
  F ref(sz);
  cpu::rmsnorm(x.data(), weight ? w.data() : nullptr, ref.data(), n, dim, eps);
  Dev<float> dx(x, off), dw(w, off);
  const float* wp = weight ? dw.get() : nullptr;
  Report r;
  if (out == RmsOut::Bf16) {
    Dev<uint16_t> y(sz, off);
    cu::rmsnorm(dx.get(), wp, y.get(), n, dim, eps);
    r.checks.push_back(check_bf16("y", y, ref, kBf16));
  } else if (out == RmsOut::F32) {
    Dev<float> y(sz, off);
    cu::rmsnorm(dx.get(), wp, y.get(), n, dim, eps);
    r.checks.push_back(check_f32("y", y, ref, kF32));
  } else {
    cu::rmsnorm(dx.get(), wp, dx.get(), n, dim, eps);
    r.checks.push_back(check_f32("x (in place)", dx, ref, kF32));
  }
  return r;
}

// --- residual add, deltas, norms --------------------------------------------------------------

struct ResidualSpec {
  bool norm_u, norm_x, next, weight;
};

Report run_add_residual(Rng& rng, int64_t n, int64_t d, ResidualSpec s) {
  const float eps = 1e-5f;
  const size_t sz = static_cast<size_t>(n * d);
  const F x = rng.uniform(sz, -2, 2), u = rng.uniform(sz, -1, 1), w = rng.uniform(static_cast<size_t>(d), 0.5f, 1.5f);
  F nu(static_cast<size_t>(n)), nx(nu.size()), xr = x, xn(sz);
  cpu::row_l2_norms(u.data(), n, d, nu.data());
  cpu::row_l2_norms(x.data(), n, d, nx.data());
  cpu::add_inplace(xr.data(), u.data(), n * d);
  cpu::rmsnorm(xr.data(), s.weight ? w.data() : nullptr, xn.data(), n, d, eps);
  Dev<float> dx(x), du(u), dw(w), dnu(nu.size()), dnx(nx.size());
  Dev<uint16_t> dxn(sz);
  cu::add_residual(dx.get(), du.get(), n, d, s.norm_u ? dnu.get() : nullptr, s.norm_x ? dnx.get() : nullptr,
                   s.weight ? dw.get() : nullptr, s.next ? dxn.get() : nullptr, eps);
  Report r;
  r.checks.push_back(check_f32("x + u", dx, xr, kExact));  // one float add on both sides
  r.checks.push_back(s.norm_u ? check_f32("||u||", dnu, nu, kF32, Scale::Self) : check_untouched("||u|| (null)", dnu));
  r.checks.push_back(s.norm_x ? check_f32("||x||", dnx, nx, kF32, Scale::Self) : check_untouched("||x|| (null)", dnx));
  r.checks.push_back(s.next ? check_bf16("rmsnorm(x + u)", dxn, xn, kBf16) : check_untouched("xn (null)", dxn));
  return r;
}

// 1 - cos(a_r, b_r), b_r = a_r + noise of a size that differs per row (deltas from ~1e-5 to ~1: far
// above the ~1e-15 that float64 cancellation leaves, so each can be compared on its own).
Report run_block_delta(Rng& rng, int64_t n, int64_t d) {
  const size_t sz = static_cast<size_t>(n * d);
  const F a = rng.uniform(sz, -1, 1), noise = rng.uniform(sz, -1, 1);
  F b(sz);
  for (int64_t r = 0; r < n; ++r) {
    const float amp = std::pow(10.f, -2.f + 2.f * static_cast<float>(r) / static_cast<float>(std::max<int64_t>(n - 1, 1)));
    for (int64_t j = 0; j < d; ++j) {
      const auto i = static_cast<size_t>(r * d + j);
      b[i] = a[i] + amp * noise[i];
    }
  }
  D ref(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t j = 0; j < d; ++j) {
      const double p = a[static_cast<size_t>(r * d + j)], q = b[static_cast<size_t>(r * d + j)];
      ab += p * q;
      aa += p * p;
      bb += q * q;
    }
    ref[static_cast<size_t>(r)] = static_cast<float>(1.0 - ab / std::sqrt(aa * bb));  // stored as float by the op
  }
  Dev<float> da(a), db(b), out(ref.size());
  cu::block_delta(da.get(), db.get(), n, d, out.get());
  Report r;
  r.checks.push_back(check_f32("1 - cos", out, ref, kF32, Scale::Self));
  return r;
}

Report run_row_l2(Rng& rng, int64_t n, int64_t d) {
  const F x = rng.uniform(static_cast<size_t>(n * d), -2, 2);
  F ref(static_cast<size_t>(n));
  cpu::row_l2_norms(x.data(), n, d, ref.data());
  Dev<float> dx(x), out(ref.size());
  cu::row_l2_norms(dx.get(), n, d, out.get());
  Report r;
  r.checks.push_back(check_f32("||x||", out, ref, kF32, Scale::Self));
  return r;
}

// --- activations, element-wise -----------------------------------------------------------------

// swiglu / geglu_tanh on [gate | up] rows of bf16.
Report run_glu(Rng& rng, bool gelu, int64_t n, int64_t ff, bool misalign) {
  const F gu = rng.bf16(static_cast<size_t>(n * 2 * ff), -4, 4);
  F g(static_cast<size_t>(n * ff)), u(g.size());
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < ff; ++i) {
      g[static_cast<size_t>(r * ff + i)] = gu[static_cast<size_t>(r * 2 * ff + i)];
      u[static_cast<size_t>(r * ff + i)] = gu[static_cast<size_t>(r * 2 * ff + ff + i)];
    }
  (gelu ? cpu::gelu_tanh_mul : cpu::silu_mul)(g.data(), u.data(), n * ff);
  const size_t off = misalign ? 1 : 0;  // 2 bytes: the 8-wide kernel's 16-byte loads are not allowed
  Dev<uint16_t> dgu = dev_bf16(gu, off), h(g.size(), off);
  (gelu ? cu::geglu_tanh : cu::swiglu)(dgu.get(), h.get(), n, ff);
  Report r;
  r.checks.push_back(check_bf16("h", h, g, kBf16));
  return r;
}

// A report of one failed check: an op refused a case it must run.
Report declined(std::string what, std::string note) {
  Check c;
  c.what = std::move(what);
  c.bad = 1;
  c.note = std::move(note);
  Report r;
  r.checks.push_back(c);
  return r;
}

// gemv_glu: act(x Wg^T) * (x Wu^T) for 1 to 4 rows, against the products in double on the host
// and the activation on their float32 values.
Report run_gemv_glu(Rng& rng, bool gelu, int64_t m, int64_t ff, int64_t k) {
  const F x = rng.bf16(static_cast<size_t>(m * k), -1, 1), w = rng.bf16(static_cast<size_t>(2 * ff * k), -0.2f, 0.2f);
  F g(static_cast<size_t>(m * ff)), u(static_cast<size_t>(m * ff));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ff; ++j) {
      double sg = 0, su = 0;
      for (int64_t t = 0; t < k; ++t) {
        sg += static_cast<double>(x[static_cast<size_t>(i * k + t)]) * w[static_cast<size_t>(j * k + t)];
        su += static_cast<double>(x[static_cast<size_t>(i * k + t)]) * w[static_cast<size_t>((ff + j) * k + t)];
      }
      g[static_cast<size_t>(i * ff + j)] = static_cast<float>(sg);
      u[static_cast<size_t>(i * ff + j)] = static_cast<float>(su);
    }
  (gelu ? cpu::gelu_tanh_mul : cpu::silu_mul)(g.data(), u.data(), m * ff);
  const D ref(g.begin(), g.end());
  Dev<uint16_t> dx = dev_bf16(x), dw = dev_bf16(w), h(static_cast<size_t>(m * ff));
  Report r;
  if (!cu::gemv_glu(dx.get(), dw.get(), m, ff, k, gelu, h.get())) return declined("h (bf16)", "gemv_glu declined a shape it supports");
  r.checks.push_back(check_bf16("h (bf16)", h, ref, kBf16Gemm));
  return r;
}

// A norm carried between two GEMVs (cu::NormCarry): x += h Wp^T, then y = rmsnorm(x) Wc^T (or
// the gate/up product of it), against the same in double on the host: the residual in float32,
// xw = x * w_norm rounded to bf16, and y.
enum class Carried { F32, Silu, Gelu };
Report run_norm_carry(Rng& rng, Carried kind, int64_t m, int64_t d, int64_t k, int64_t n_out) {
  const float eps = 1e-5f;
  const int64_t rows_c = kind == Carried::F32 ? n_out : 2 * n_out;
  const F x0 = rng.uniform(static_cast<size_t>(m * d), -1, 1), h = rng.bf16(static_cast<size_t>(m * k), -1, 1);
  const F wp = rng.bf16(static_cast<size_t>(d * k), -0.1f, 0.1f), wn = rng.uniform(static_cast<size_t>(d), 0.5f, 1.5f);
  const F wc = rng.bf16(static_cast<size_t>(rows_c * d), -0.2f, 0.2f);
  D x1(static_cast<size_t>(m * d)), xw(static_cast<size_t>(m * d)), xn(static_cast<size_t>(m * d));
  for (int64_t i = 0; i < m; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) {
      double a = x0[static_cast<size_t>(i * d + j)];
      for (int64_t t = 0; t < k; ++t) a += static_cast<double>(h[static_cast<size_t>(i * k + t)]) * wp[static_cast<size_t>(j * k + t)];
      x1[static_cast<size_t>(i * d + j)] = a;
      xw[static_cast<size_t>(i * d + j)] = a * wn[static_cast<size_t>(j)];
      ss += a * a;
    }
    const double rs = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (int64_t j = 0; j < d; ++j) xn[static_cast<size_t>(i * d + j)] = xw[static_cast<size_t>(i * d + j)] * rs;
  }
  F prod(static_cast<size_t>(m * rows_c));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < rows_c; ++c) {
      double a = 0;
      for (int64_t j = 0; j < d; ++j) a += xn[static_cast<size_t>(i * d + j)] * wc[static_cast<size_t>(c * d + j)];
      // gate/up: the gates first in each row, then the ups
      prod[static_cast<size_t>(i * rows_c + c)] = static_cast<float>(a);
    }
  Dev<float> dx(x0), part(static_cast<size_t>(m * cu::norm_carry_parts(d))), dwn(wn);
  Dev<uint16_t> dh = dev_bf16(h), dwp = dev_bf16(wp), dwc = dev_bf16(wc), dxw(static_cast<size_t>(m * d));
  Report r;
  if (!cu::norm_carry_fits(m, k, dwp.get()) || !cu::norm_carry_fits(m, d, dwc.get()))
    return declined("norm_carry_fits", "declined a shape our GEMV runs");
  const cu::NormCarry carry{dwn.get(), dxw.get(), part.get(), d, eps};
  cu::gemm_accumulate_carry(dh.get(), dwp.get(), m, d, k, dx.get(), carry);
  r.checks.push_back(check_f32("x + h Wp^T", dx, x1, kF32Gemm));
  r.checks.push_back(check_bf16("xw (bf16)", dxw, xw, kBf16));
  if (kind == Carried::F32) {
    Dev<float> y(static_cast<size_t>(m * n_out));
    cu::gemm_normed(carry, dwc.get(), m, n_out, y.get());
    r.checks.push_back(check_f32("rmsnorm(x) Wc^T", y, D(prod.begin(), prod.end()), kBf16Gemm));
  } else {
    F g(static_cast<size_t>(m * n_out)), u(static_cast<size_t>(m * n_out));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n_out; ++j) {
        g[static_cast<size_t>(i * n_out + j)] = prod[static_cast<size_t>(i * rows_c + j)];
        u[static_cast<size_t>(i * n_out + j)] = prod[static_cast<size_t>(i * rows_c + n_out + j)];
      }
    (kind == Carried::Gelu ? cpu::gelu_tanh_mul : cpu::silu_mul)(g.data(), u.data(), m * n_out);
    Dev<uint16_t> hh(static_cast<size_t>(m * n_out));
    cu::gemv_glu_normed(carry, dwc.get(), m, n_out, kind == Carried::Gelu, hh.get());
    r.checks.push_back(check_bf16("act(gate) * up of rmsnorm(x) (bf16)", hh, D(g.begin(), g.end()), kBf16Gemm));
  }
  return r;
}

// silu_mul / gelu_tanh_mul on float32, in place.
Report run_act_f32(Rng& rng, bool gelu, int64_t n) {
  F g = rng.uniform(static_cast<size_t>(n), -6, 6);
  const F u = rng.uniform(static_cast<size_t>(n), -2, 2);
  Dev<float> dg(g), du(u);
  (gelu ? cpu::gelu_tanh_mul : cpu::silu_mul)(g.data(), u.data(), n);
  (gelu ? cu::gelu_tanh_mul : cu::silu_mul)(dg.get(), du.get(), n);
  Report r;
  r.checks.push_back(check_f32("g", dg, g, kF32));
  return r;
}

Report run_add_inplace(Rng& rng, int64_t n) {
  F y = rng.uniform(static_cast<size_t>(n), -2, 2);
  const F x = rng.uniform(static_cast<size_t>(n), -2, 2);
  Dev<float> dy(y), dx(x);
  cpu::add_inplace(y.data(), x.data(), n);
  cu::add_inplace(dy.get(), dx.get(), n);
  Report r;
  r.checks.push_back(check_f32("y + x", dy, y, kExact));
  return r;
}

Report run_scale_inplace(Rng& rng, int64_t n, float s) {
  F y = rng.uniform(static_cast<size_t>(n), -2, 2);
  Dev<float> dy(y);
  cpu::scale_inplace(y.data(), s, n);
  cu::scale_inplace(dy.get(), s, n);
  Report r;
  r.checks.push_back(check_f32("y * s", dy, y, kExact));
  return r;
}

// --- conversions -------------------------------------------------------------------------------

// Finite floats of every exponent, signed zeros, subnormals and round-to-nearest-even ties.
Report run_f32_to_bf16(Rng& rng, int64_t n) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x00000001u, 0x807FFFFFu, 0x3F808000u, 0x3F818000u,
                                0x3F808001u, 0x3F817FFFu, 0xBF808000u, 0x7F7F7FFFu, 0xFF7F7FFFu, 0x00408000u};
  while (static_cast<int64_t>(bits.size()) < n) {
    const uint32_t sign = rng.bits() & 0x80000000u;
    const uint32_t exp = static_cast<uint32_t>(rng.below(255)) << 23;  // 0 (subnormal) .. 254
    const uint32_t mant = rng.bits() & 0x007FFFFFu;
    uint32_t x = sign | exp | mant;
    if (rng.chance(0.1)) x = (x & 0xFFFF0000u) | 0x8000u;  // an exact tie
    if ((x & 0x7F7F8000u) == 0x7F7F8000u) x &= ~0x8000u;  // no rounding up past the largest bf16
    bits.push_back(x);
  }
  bits.resize(static_cast<size_t>(n));
  F x(bits.size());
  U16 want(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    x[i] = std::bit_cast<float>(bits[i]);
    want[i] = cpu::fp32_to_bf16(x[i]);
  }
  Dev<float> dx(x);
  Dev<uint16_t> out(x.size());
  cu::f32_to_bf16(dx.get(), out.get(), n);
  int64_t outside = 0;
  Report r;
  r.checks.push_back(compare_bits("bf16 bits", out.fetch(&outside), want));
  add_outside(r.checks.back(), outside);
  return r;
}

// Every bf16 pattern that is not NaN (infinities, zeros, subnormals included).
Report run_bf16_to_f32(Rng&) {
  U16 in;
  for (uint32_t h = 0; h <= 0xFFFFu; ++h)
    if ((h & 0x7FFFu) <= 0x7F80u) in.push_back(static_cast<uint16_t>(h));
  std::vector<uint32_t> want(in.size());
  for (size_t i = 0; i < in.size(); ++i) want[i] = std::bit_cast<uint32_t>(cpu::bf16_to_fp32(in[i]));
  Dev<uint16_t> din(in);
  Dev<float> out(in.size());
  cu::bf16_to_f32(din.get(), out.get(), static_cast<int64_t>(in.size()));
  int64_t outside = 0;
  const F got = out.fetch(&outside);
  std::vector<uint32_t> got_bits(got.size());
  for (size_t i = 0; i < got.size(); ++i) got_bits[i] = std::bit_cast<uint32_t>(got[i]);
  Report r;
  r.checks.push_back(compare_bits("f32 bits", got_bits, want));
  add_outside(r.checks.back(), outside);
  return r;
}

// --- rows: embedding, gather, scatter, byte masks ---------------------------------------------

Report run_embed(Rng& rng, int64_t vocab, int64_t dim, int64_t n, float scale, bool out_of_range) {
  const F table = rng.bf16(static_cast<size_t>(vocab * dim), -1, 1);
  const U16 table_bits = to_bf16_bits(table);
  I32 toks(static_cast<size_t>(n));
  for (auto& t : toks) t = static_cast<int32_t>(rng.below(vocab));
  if (out_of_range) {  // documented: such ids give zero rows
    const int32_t bad_ids[] = {-1, static_cast<int32_t>(vocab), static_cast<int32_t>(vocab + 1000), std::numeric_limits<int32_t>::min()};
    for (size_t i = 0; i < std::size(bad_ids) && i < toks.size(); ++i) toks[static_cast<size_t>(rng.below(n))] = bad_ids[i];
  }
  cpu::WeightView wv;
  wv.type = DType::BF16;
  wv.data = table_bits.data();
  wv.in_features = dim;
  wv.out_features = vocab;
  F ref(static_cast<size_t>(n * dim), 0.f);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t t = toks[static_cast<size_t>(i)];
    if (t < 0 || t >= vocab) continue;
    float* row = ref.data() + i * dim;
    cpu::get_rows(wv, &t, 1, row);
    cpu::scale_inplace(row, scale, dim);
  }
  Dev<uint16_t> dt(table_bits);
  Dev<int32_t> dtok(toks);
  Dev<float> x(ref.size());
  cu::embed_rows(dt.get(), vocab, dtok.get(), n, dim, scale, x.get());
  Report r;
  r.checks.push_back(check_f32("x", x, ref, kExact));
  return r;
}

Report run_gather(Rng& rng, bool bf16, int64_t n_src, int64_t n, int64_t width) {
  const F src = rng.bf16(static_cast<size_t>(n_src * width), -1, 1);
  I32 idx(static_cast<size_t>(n));
  for (auto& i : idx) i = static_cast<int32_t>(rng.below(n_src));  // repeats allowed
  F ref(static_cast<size_t>(n * width));
  cpu::gather_rows(src.data(), idx.data(), n, width, ref.data());
  Dev<int32_t> didx(idx);
  Report r;
  if (bf16) {
    Dev<uint16_t> ds = dev_bf16(src), dst(ref.size());
    cu::gather_rows(ds.get(), didx.get(), n, width, dst.get());
    r.checks.push_back(check_bf16("dst", dst, ref, kExact));
  } else {
    Dev<float> ds(src), dst(ref.size());
    cu::gather_rows(ds.get(), didx.get(), n, width, dst.get());
    r.checks.push_back(check_f32("dst", dst, ref, kExact));
  }
  return r;
}

// Into a destination of random rows: the rows not listed must keep their values.
Report run_scatter(Rng& rng, int64_t n_dst, int64_t n, int64_t width) {
  const F src = rng.uniform(static_cast<size_t>(n * width), -1, 1);
  const F dst0 = rng.uniform(static_cast<size_t>(n_dst * width), -1, 1);
  const I32 idx = rng.distinct(n, n_dst);
  F ref = dst0;
  cpu::scatter_rows(src.data(), idx.data(), n, width, ref.data());
  Dev<float> ds(src), dd(dst0);
  Dev<int32_t> didx(idx);
  cu::scatter_rows(ds.get(), didx.get(), n, width, dd.get());
  Report r;
  r.checks.push_back(check_f32("dst", dd, ref, kExact));
  return r;
}

Report run_set_bytes(Rng& rng, int64_t n_mask, int64_t n, uint8_t v) {
  U8 mask(static_cast<size_t>(n_mask));
  for (auto& b : mask) b = static_cast<uint8_t>(rng.below(255));
  const I32 idx = rng.distinct(n, n_mask);
  U8 want = mask;
  for (int32_t i : idx) want[static_cast<size_t>(i)] = v;
  Dev<uint8_t> dm(mask);
  Dev<int32_t> didx(idx);
  cu::set_bytes_at(dm.get(), didx.get(), n, v);
  int64_t outside = 0;
  Report r;
  r.checks.push_back(compare_bits("mask", dm.fetch(&outside), want));
  add_outside(r.checks.back(), outside);
  return r;
}

// --- heads: bias, per-head RMSNorm, RoPE, scatter into cache slots ----------------------------

cu::RopeParams rope_of(int hd, int n_rot, float base, bool neox, const float* freq_factors) {
  cu::RopeParams p;
  p.head_dim = hd;
  p.n_rot = n_rot;
  p.freq_base = base;
  p.neox = neox;
  p.freq_factors = freq_factors;
  return p;
}

struct PrepSpec {
  int heads, hd, n_rot;
  bool neox, norm, bias, factors;
  float base, freq_scale;
  int64_t n;
  int64_t pad;   // extra floats per input row (and bf16 per output row): left alone
  bool scatter;  // bf16 rows into random distinct slots of a larger cache (else in order)
};

Report run_prep_heads(Rng& rng, const PrepSpec& s, bool bf16_out) {
  const float eps = 1e-6f;
  const int64_t width = int64_t{s.heads} * s.hd, stride = width + s.pad, n = s.n;
  const F x = rng.uniform(static_cast<size_t>(n * stride), -2, 2);
  const F bias = rng.uniform(static_cast<size_t>(width), -1, 1);
  const F nw = rng.uniform(static_cast<size_t>(s.hd), 0.5f, 1.5f);
  const F ff = rng.uniform(static_cast<size_t>(std::max(s.n_rot / 2, 1)), 1.f, 4.f);
  I32 pos(static_cast<size_t>(n));
  for (auto& p : pos) p = static_cast<int32_t>(rng.below(200000));  // positions up to 2e5, any order
  // CPU: bias, per-head RMSNorm, RoPE on a dense copy.
  F ref(static_cast<size_t>(n * width));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < width; ++i)
      ref[static_cast<size_t>(r * width + i)] = x[static_cast<size_t>(r * stride + i)] + (s.bias ? bias[static_cast<size_t>(i)] : 0.f);
  if (s.norm) cpu::rmsnorm_heads(ref.data(), nw.data(), n * s.heads, s.hd, eps);
  if (s.n_rot > 0) {
    cpu::RopeParams rp;
    rp.head_dim = s.hd;
    rp.n_rot = s.n_rot;
    rp.freq_base = s.base;
    rp.freq_scale = s.freq_scale;
    rp.neox = s.neox;
    rp.freq_factors = s.factors ? ff.data() : nullptr;
    cpu::rope(ref.data(), n, s.heads, width, pos.data(), rp);
  }
  Dev<float> dx(x), db(bias), dn(nw), dff(ff);
  Dev<int32_t> dpos(pos);
  cu::RopeParams gp = rope_of(s.hd, s.n_rot, s.base, s.neox, s.factors ? dff.get() : nullptr);
  gp.freq_scale = s.freq_scale;
  const int32_t* pos_arg = s.n_rot > 0 ? dpos.get() : nullptr;  // no RoPE: no positions needed
  const float* bias_arg = s.bias ? db.get() : nullptr;
  const float* norm_arg = s.norm ? dn.get() : nullptr;
  Report r;
  if (bf16_out) {
    const int64_t n_slots = s.scatter ? n + 7 : n, out_stride = width + s.pad;
    const I32 rows = s.scatter ? rng.distinct(n, n_slots) : I32{};
    Dev<int32_t> drows(rows);
    Dev<uint16_t> out(static_cast<size_t>(n_slots * out_stride));
    cu::prep_heads(dx.get(), stride, n, s.heads, bias_arg, norm_arg, eps, gp, pos_arg, out.get(), out_stride,
                   s.scatter ? drows.get() : nullptr);
    int64_t outside = 0;
    const U16 all = out.fetch(&outside);
    F got(ref.size());
    std::vector<bool> listed(all.size(), false);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t slot = s.scatter ? rows[static_cast<size_t>(t)] : t;
      for (int64_t i = 0; i < width; ++i) {
        const auto at = static_cast<size_t>(slot * out_stride + i);
        got[static_cast<size_t>(t * width + i)] = cpu::bf16_to_fp32(all[at]);
        listed[at] = true;
      }
    }
    for (size_t i = 0; i < all.size(); ++i) outside += !listed[i] && !is_poison(all[i]) ? 1 : 0;
    r.checks.push_back(compare("q/k rows (bf16)", got, ref, kBf16));
    add_outside(r.checks.back(), outside, "outside the listed rows");
  } else {
    cu::prep_heads_f32(dx.get(), stride, n, s.heads, bias_arg, norm_arg, eps, gp, pos_arg);
    int64_t outside = 0;
    const F all = dx.fetch(&outside);
    F got(ref.size());
    int64_t pad_changed = 0;
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t i = 0; i < width; ++i) got[static_cast<size_t>(t * width + i)] = all[static_cast<size_t>(t * stride + i)];
      for (int64_t i = width; i < stride; ++i) {
        const auto at = static_cast<size_t>(t * stride + i);
        pad_changed += std::bit_cast<uint32_t>(all[at]) != std::bit_cast<uint32_t>(x[at]) ? 1 : 0;
      }
    }
    r.checks.push_back(compare("rows (f32, in place)", got, ref, kF32));
    add_outside(r.checks.back(), outside);
    add_outside(r.checks.back(), pad_changed, "in the row padding");
  }
  return r;
}

// Q, K and V from two paths, bit for bit, and nothing written outside them by either.
Report same_qkv(const Dev<uint16_t>& q, const Dev<uint16_t>& k, const Dev<uint16_t>& v, const Dev<uint16_t>& q_want,
                const Dev<uint16_t>& k_want, const Dev<uint16_t>& v_want) {
  Report r;
  int64_t outside = 0;
  r.checks.push_back(compare_bits("q", q.fetch(&outside), q_want.fetch(&outside)));
  r.checks.push_back(compare_bits("k slots", k.fetch(&outside), k_want.fetch(&outside)));
  r.checks.push_back(compare_bits("v slots", v.fetch(&outside), v_want.fetch(&outside)));
  add_outside(r.checks.back(), outside);
  return r;
}

// Q, K and V of n_head / n_head_kv heads (rope.head_dim each) into q (in order) and the cache
// slots pos[r] of k and v.
cu::QkvPrep qkv_to(int n_head, int n_head_kv, const float* bias, const cu::RopeParams& rope, const int32_t* pos,
                   Dev<uint16_t>& q, Dev<uint16_t>& k, Dev<uint16_t>& v) {
  cu::QkvPrep p;
  p.n_head = n_head;
  p.n_head_kv = n_head_kv;
  p.bias = bias;
  p.rope = rope;
  p.pos = pos;
  p.q = q.get();
  p.q_stride = int64_t{n_head} * rope.head_dim;
  p.k = k.get();
  p.v = v.get();
  p.kv_stride = int64_t{n_head_kv} * rope.head_dim;
  return p;
}

// Q, K and V in one launch: bit for bit what prep_heads gives on each part (Q in order, K and V
// scattered into cache slots), and nothing written elsewhere.
struct QkvSpec {
  int n_head, n_head_kv, hd, n_rot;
  bool neox, norm, bias;
  int64_t n, pad;
};

Report run_prep_qkv(Rng& rng, const QkvSpec& s) {
  const float eps = 1e-6f;
  const int64_t qd = int64_t{s.n_head} * s.hd, kvd = int64_t{s.n_head_kv} * s.hd, width = qd + 2 * kvd;
  const int64_t stride = width + s.pad, n = s.n, n_slots = n + 5;
  const F x = rng.uniform(static_cast<size_t>(n * stride), -2, 2);
  const F bias = rng.uniform(static_cast<size_t>(width), -1, 1);
  const F qn = rng.uniform(static_cast<size_t>(s.hd), 0.5f, 1.5f), kn = rng.uniform(static_cast<size_t>(s.hd), 0.5f, 1.5f);
  const I32 slots = rng.distinct(n, n_slots);  // the positions: distinct cache slots, any order
  Dev<float> dx(x), db(bias), dqn(qn), dkn(kn);
  Dev<int32_t> dpos(slots);
  const cu::RopeParams gp = rope_of(s.hd, s.n_rot, 10000.f, s.neox, nullptr);
  cu::RopeParams none = gp;
  none.n_rot = 0;
  const float* b = s.bias ? db.get() : nullptr;
  const float* qnorm = s.norm ? dqn.get() : nullptr;
  const float* knorm = s.norm ? dkn.get() : nullptr;
  const size_t q_elems = static_cast<size_t>(n * qd), kv_elems = static_cast<size_t>(n_slots * kvd);
  Dev<uint16_t> q1(q_elems), k1(kv_elems), v1(kv_elems), q2(q_elems), k2(kv_elems), v2(kv_elems);
  cu::prep_heads(dx.get(), stride, n, s.n_head, b, qnorm, eps, gp, dpos.get(), q1.get(), qd, nullptr);
  cu::prep_heads(dx.get() + qd, stride, n, s.n_head_kv, b ? b + qd : nullptr, knorm, eps, gp, dpos.get(), k1.get(), kvd,
                 dpos.get());
  cu::prep_heads(dx.get() + qd + kvd, stride, n, s.n_head_kv, b ? b + qd + kvd : nullptr, nullptr, eps, none, nullptr, v1.get(),
                 kvd, dpos.get());
  cu::prep_qkv(dx.get(), stride, n, qkv_to(s.n_head, s.n_head_kv, b, gp, dpos.get(), q2, k2, v2), qnorm, knorm, eps);
  return same_qkv(q2, k2, v2, q1, k1, v1);
}

// The Q/K/V product with prep_qkv as its epilogue (gemv_qkv, and gemv_qkv_normed on a carried
// norm): bit for bit what the GEMV then prep_qkv give (Q in order, K and V in cache slots at their
// positions), and nothing written elsewhere.
struct QkvGemvSpec {
  int n_head, n_head_kv, hd, n_rot;
  bool neox, bias, factors, carried;
  int64_t m, k;
};

Report run_qkv_epilogue(Rng& rng, const QkvGemvSpec& s) {
  const int64_t qd = int64_t{s.n_head} * s.hd, kvd = int64_t{s.n_head_kv} * s.hd, width = qd + 2 * kvd;
  const int64_t m = s.m, k = s.k, n_slots = 4099, kin = 16;
  const F x = rng.bf16(static_cast<size_t>(m * k), -1, 1), w = rng.bf16(static_cast<size_t>(width * k), -0.2f, 0.2f);
  const F bias = rng.uniform(static_cast<size_t>(width), -1, 1);
  const F ff = rng.uniform(static_cast<size_t>(std::max(s.n_rot / 2, 1)), 1.f, 4.f);
  const I32 slots = rng.distinct(m, n_slots);  // the positions: distinct cache slots up to 4098, any order
  Dev<uint16_t> dx = dev_bf16(x), dw = dev_bf16(w);
  Dev<float> db(bias), dff(ff);
  Dev<int32_t> dpos(slots);
  const cu::RopeParams gp = rope_of(s.hd, s.n_rot, 500000.f, s.neox, s.factors ? dff.get() : nullptr);
  // The carried norm as the decode step makes it: a residual-adding product before this one.
  const F x0 = rng.uniform(static_cast<size_t>(m * k), -1, 1), h = rng.bf16(static_cast<size_t>(m * kin), -1, 1);
  const F wp = rng.bf16(static_cast<size_t>(k * kin), -0.1f, 0.1f), wn = rng.uniform(static_cast<size_t>(k), 0.5f, 1.5f);
  Dev<float> dx0(x0), part(static_cast<size_t>(m * cu::norm_carry_parts(k))), dwn(wn);
  Dev<uint16_t> dh = dev_bf16(h), dwp = dev_bf16(wp), dxw(static_cast<size_t>(m * k));
  const cu::NormCarry carry{dwn.get(), dxw.get(), part.get(), k, 1e-6f};
  if (!cu::qkv_epilogue_fits(m, k, dw.get()) || (s.carried && !cu::norm_carry_fits(m, kin, dwp.get())))
    return declined("qkv_epilogue_fits", "declined a shape our GEMV runs");
  if (s.carried) cu::gemm_accumulate_carry(dh.get(), dwp.get(), m, k, kin, dx0.get(), carry);

  const float* b = s.bias ? db.get() : nullptr;
  const size_t q_elems = static_cast<size_t>(m * qd), kv_elems = static_cast<size_t>(n_slots * kvd);
  Dev<uint16_t> q1(q_elems), k1(kv_elems), v1(kv_elems), q2(q_elems), k2(kv_elems), v2(kv_elems);
  Dev<float> y(static_cast<size_t>(m * width));
  if (s.carried) cu::gemm_normed(carry, dw.get(), m, width, y.get());
  else cu::gemm(dx.get(), dw.get(), m, width, k, y.get());
  cu::prep_qkv(y.get(), width, m, qkv_to(s.n_head, s.n_head_kv, b, gp, dpos.get(), q1, k1, v1), nullptr, nullptr, 1e-6f);
  const cu::QkvPrep p = qkv_to(s.n_head, s.n_head_kv, b, gp, dpos.get(), q2, k2, v2);
  if (s.carried) cu::gemv_qkv_normed(carry, dw.get(), m, p);
  else cu::gemv_qkv(dx.get(), dw.get(), m, k, p);
  return same_qkv(q2, k2, v2, q1, k1, v1);
}

// --- attention ---------------------------------------------------------------------------------

enum class Layout {
  Last,        // queries are the last n_q slots: full causal (n_q == n_kv) or after a cached prefix
  Subset,      // ascending positions with gaps, the last slot always one of them (as in DASH)
  SubsetFrom0, // the same with position 0 among them
  SubsetNo0,   // the same without position 0
};

struct AttnSpec {
  int n_head, n_head_kv, hd;
  int64_t n_kv, n_q;
  Layout layout = Layout::Last;
  int window = 0;
  double holes = 0;  // fraction of slots marked invalid; with holes the first 5 slots are invalid too
  int64_t extra = 0;  // decode route: cache slots past n_kv (NaN, valid) that no row may read
};

I32 positions(Rng& rng, Layout layout, int64_t n_kv, int64_t n_q) {
  I32 pos;
  if (layout == Layout::Last) {
    for (int64_t i = n_kv - n_q; i < n_kv; ++i) pos.push_back(static_cast<int32_t>(i));
    return pos;
  }
  pos.push_back(static_cast<int32_t>(n_kv - 1));
  const bool zero = layout == Layout::SubsetFrom0 && n_kv > 1 && n_q > 1;
  if (zero) pos.push_back(0);
  const int64_t lo = layout == Layout::Subset ? 0 : 1;  // 0 is either added above or left out
  I32 pool;
  for (int64_t i = lo; i < n_kv - 1; ++i) pool.push_back(static_cast<int32_t>(i));
  std::shuffle(pool.begin(), pool.end(), rng.engine());
  for (size_t i = 0; static_cast<int64_t>(pos.size()) < n_q && i < pool.size(); ++i) pos.push_back(pool[i]);
  std::sort(pos.begin(), pos.end());
  return pos;
}

struct AttnData {
  F q, k, v;
  I32 pos;
  U8 valid;
  bool masked = false;
  int64_t qs = 0, ks = 0;
  cpu::AttentionParams cp;
  cu::AttentionParams gp;
};

AttnData make_attention(Rng& rng, const AttnSpec& s) {
  AttnData d;
  d.qs = int64_t{s.n_head} * s.hd;
  d.ks = int64_t{s.n_head_kv} * s.hd;
  d.pos = positions(rng, s.layout, s.n_kv, s.n_q);
  d.q = rng.bf16(static_cast<size_t>(s.n_q * d.qs), -2, 2);
  d.k = rng.bf16(static_cast<size_t>(s.n_kv * d.ks), -2, 2);
  d.v = rng.bf16(static_cast<size_t>(s.n_kv * d.ks), -1, 1);
  d.valid.assign(static_cast<size_t>(s.n_kv), 1);
  d.masked = s.holes > 0;
  if (d.masked) {
    for (auto& b : d.valid) b = rng.chance(s.holes) ? 0 : 1;
    for (int64_t j = 0; j < std::min<int64_t>(5, s.n_kv); ++j) d.valid[static_cast<size_t>(j)] = 0;  // early rows see nothing
  }
  d.cp.n_head = d.gp.n_head = s.n_head;
  d.cp.n_head_kv = d.gp.n_head_kv = s.n_head_kv;
  d.cp.head_dim = d.gp.head_dim = s.hd;
  d.cp.scale = d.gp.scale = 1.f / std::sqrt(static_cast<float>(s.hd));
  d.cp.window = d.gp.window = s.window;
  return d;
}

// Number of keys query row i sees (position, window, validity).
int64_t visible_keys(const AttnData& d, const AttnSpec& s, int64_t i) {
  const int64_t p = d.pos[static_cast<size_t>(i)];
  const int64_t lo = s.window > 0 ? std::max<int64_t>(0, p - s.window + 1) : 0, hi = std::min<int64_t>(p, s.n_kv - 1);
  int64_t c = 0;
  for (int64_t j = lo; j <= hi; ++j) c += d.valid[static_cast<size_t>(j)] ? 1 : 0;
  return c;
}

enum class AttnRoute { Ours, Simple, Cudnn, Decode, DecodeFp8 };

// The cuDNN op returned false. Without cuDNN that is a skip of this route. With it, the API still
// lets cuDNN decline a shape (the caller then runs attention()): a failure for the shapes the
// engine is known to send it (must_take), a skip for the others.
Report cudnn_declined(const char* op, bool must_take) {
  Report r;
  std::string why;
  if (!cu::dense_attention_available(&why)) {
    r.skip = std::string(op) + ": cuDNN route not available: " + why;
  } else if (!must_take) {
    r.skip = std::string(op) + ": cuDNN declined this shape (allowed: the caller falls back to attention())";
  } else {
    Check c;
    c.what = std::string(op) + " ran";
    c.bad = 1;
    c.note = "cuDNN is available but the op returned false for a shape it should take";
    r.checks.push_back(c);
  }
  return r;
}

// An fp8 cache of the n_kv keys and values of d, plus `extra` slots of NaN after them (slots past
// the rows' positions, which nothing may read), quantized on the device by kv_fp8_store.
struct Fp8Cache {
  Dev<uint8_t> k8, v8;
  Dev<float> ks, vs;
  F k, v;  // the n_kv slots dequantized by kv_fp8_load (the values the attention must use)
  Check roundtrip;
  int64_t stride = 0;  // of the scales
  cu::Fp8Kv kv() const { return cu::Fp8Kv{k8.get(), v8.get(), ks.get(), vs.get(), stride}; }
};
Fp8Cache make_fp8_cache(const AttnData& d, const AttnSpec& s) {
  const int64_t slots = s.n_kv + s.extra, hd = s.hd;
  std::vector<uint16_t> kb = to_bf16_bits(d.k), vb = to_bf16_bits(d.v);
  kb.resize(static_cast<size_t>(slots * d.ks), 0xFFFF);
  vb.resize(kb.size(), 0xFFFF);
  Dev<uint16_t> ck(kb), cv(vb);
  I32 all(static_cast<size_t>(slots));
  std::iota(all.begin(), all.end(), 0);
  Dev<int32_t> dall(all);
  const int64_t stride = (slots + 15) / 16 * 16;
  const auto n_sc = static_cast<size_t>(stride * s.n_head_kv);
  Fp8Cache c{Dev<uint8_t>(kb.size()), Dev<uint8_t>(kb.size()), Dev<float>(n_sc), Dev<float>(n_sc), {}, {}, {}, stride};
  cu::kv_fp8_store(ck.get(), cv.get(), dall.get(), slots, s.n_head_kv, s.hd, c.kv());
  Dev<uint16_t> bk(static_cast<size_t>(s.n_kv * d.ks)), bv(static_cast<size_t>(s.n_kv * d.ks));
  cu::kv_fp8_load(c.kv(), s.n_kv, s.n_head_kv, s.hd, bk.get(), bv.get());
  int64_t outside = 0;
  c.k = from_bf16_bits(bk.fetch(&outside));
  c.v = from_bf16_bits(bv.fetch(&outside));
  // e4m3 keeps 3 mantissa bits: each value within 2^-4 of itself, or 2^-10 of its head's scale
  // (the largest magnitude / 448) below 2^-6 of it; the load rounds to bf16 (2^-8 more).
  Check& r = c.roundtrip;
  r.what = "fp8 store + load within e4m3's rounding (err: the largest error over its bound)";
  r.tol = 1;
  r.bad = outside;
  for (const auto& [src, got] : {std::pair{&d.k, &c.k}, std::pair{&d.v, &c.v}}) {
    for (int64_t h0 = 0; h0 < s.n_kv * d.ks; h0 += hd) {
      double amax = 0;
      for (int64_t e = h0; e < h0 + hd; ++e) amax = std::max(amax, std::fabs(static_cast<double>((*src)[static_cast<size_t>(e)])));
      const double scale = amax / cu::kFp8Max;
      for (int64_t e = h0; e < h0 + hd; ++e) {
        const double x = (*src)[static_cast<size_t>(e)], g = (*got)[static_cast<size_t>(e)];
        ++r.n;
        if (!std::isfinite(g)) {
          ++r.bad;
          continue;
        }
        const double bound = std::fabs(x) * (0.0625 + 0.00390625) + scale * 0.0009765625 + 1e-30;
        r.err = std::max(r.err, std::fabs(g - x) / bound);
      }
    }
  }
  return c;
}

Report run_attention(Rng& rng, const AttnSpec& s, AttnRoute route, bool must_take = true) {
  const AttnData d = make_attention(rng, s);
  F ref(static_cast<size_t>(s.n_q * d.qs));
  std::optional<Fp8Cache> c8;
  const bool fp8 = route == AttnRoute::DecodeFp8;
  if (fp8) c8.emplace(make_fp8_cache(d, s));
  // fp8: the reference attends to the values the cache holds.
  const F& rk = c8 ? c8->k : d.k;
  const F& rv = c8 ? c8->v : d.v;
  cpu::attention(d.q.data(), d.pos.data(), s.n_q, rk.data(), rv.data(), s.n_kv, d.masked ? d.valid.data() : nullptr, d.cp,
                 ref.data());
  Dev<uint16_t> dq = dev_bf16(d.q), dk = dev_bf16(d.k), dv = dev_bf16(d.v);
  Dev<int32_t> dpos(d.pos);
  Dev<uint8_t> dvalid(d.valid);
  Dev<uint16_t> out(ref.size());
  if (route == AttnRoute::Cudnn) {
    const bool ran = s.layout == Layout::Last
                         ? cu::attention_dense(dq.get(), s.n_q, dk.get(), dv.get(), s.n_kv, d.gp, out.get())
                         : cu::attention_subset(dq.get(), dpos.get(), d.pos.data(), s.n_q, dk.get(), dv.get(), s.n_kv, d.gp,
                                                out.get());
    if (!ran) return cudnn_declined(s.layout == Layout::Last ? "attention_dense" : "attention_subset", must_take);
  } else if (route == AttnRoute::Decode) {
    // The whole cache as the engine passes it while decoding: n_kv + extra slots, the ones past the
    // rows' positions NaN; the key range comes from the positions on the device.
    std::vector<uint16_t> kb = to_bf16_bits(d.k), vb = to_bf16_bits(d.v);
    kb.resize(static_cast<size_t>((s.n_kv + s.extra) * d.ks), 0xFFFF);
    vb.resize(kb.size(), 0xFFFF);
    U8 valid = d.valid;
    valid.resize(static_cast<size_t>(s.n_kv + s.extra), 1);
    Dev<uint16_t> ck(kb), cv(vb);
    Dev<uint8_t> cvalid(valid);
    Dev<float> ws(cu::attention_decode_workspace(d.gp, s.n_q));
    cu::attention_decode(dq.get(), dpos.get(), s.n_q, ck.get(), cv.get(), s.n_kv + s.extra, d.masked ? cvalid.get() : nullptr,
                         d.gp, out.get(), ws.get(), ws.size());
    cu::synchronize();
  } else if (fp8) {
    U8 valid = d.valid;
    valid.resize(static_cast<size_t>(s.n_kv + s.extra), 1);
    Dev<uint8_t> cvalid(valid);
    Dev<float> ws(cu::attention_decode_workspace(d.gp, s.n_q, true));
    cu::attention_decode(dq.get(), dpos.get(), s.n_q, c8->kv(), s.n_kv + s.extra, d.masked ? cvalid.get() : nullptr, d.gp,
                         out.get(), ws.get(), ws.size());
    cu::synchronize();
  } else {
    cu::attention(dq.get(), dpos.get(), s.n_q, dk.get(), dv.get(), s.n_kv, d.masked ? dvalid.get() : nullptr, d.gp, out.get(),
                  route == AttnRoute::Simple);
  }
  int64_t outside = 0;
  const F got = from_bf16_bits(out.fetch(&outside));
  Report r;
  if (c8) r.checks.push_back(c8->roundtrip);
  r.checks.push_back(compare("out", got, ref, kBf16, Scale::PerHead, s.hd));
  add_outside(r.checks.back(), outside);
  // Rows that see no key: exactly zero.
  Check z;
  z.what = "rows that see no key are 0";
  for (int64_t i = 0; i < s.n_q; ++i) {
    if (visible_keys(d, s, i) > 0) continue;
    for (int64_t j = 0; j < d.qs; ++j) {
      const float g = got[static_cast<size_t>(i * d.qs + j)], w = ref[static_cast<size_t>(i * d.qs + j)];
      ++z.n;
      if (!std::isfinite(g) || w != 0.f) ++z.bad;
      else z.err = std::max(z.err, static_cast<double>(std::fabs(g)));
    }
  }
  r.checks.push_back(z);
  return r;
}

// The attention each slot receives from the last few query rows.
Report run_attention_received(Rng& rng, const AttnSpec& s) {
  const AttnData d = make_attention(rng, s);
  const int64_t rows = std::min<int64_t>(s.n_q, 9), i0 = s.n_q - rows;
  F ref(static_cast<size_t>(s.n_kv));
  cpu::attention_received(d.q.data() + i0 * d.qs, d.pos.data() + i0, rows, d.k.data(), s.n_kv, d.masked ? d.valid.data() : nullptr,
                          d.cp, ref.data());
  Dev<uint16_t> dq = dev_bf16(d.q), dk = dev_bf16(d.k);
  Dev<int32_t> dpos(d.pos);
  Dev<uint8_t> dvalid(d.valid);
  Dev<float> out(ref.size());
  Dev<float> ws(cu::attention_received_workspace(d.gp, rows));
  cu::attention_received(dq.get() + i0 * d.qs, dpos.get() + i0, rows, dk.get(), s.n_kv, d.masked ? dvalid.get() : nullptr, d.gp,
                         out.get(), ws.get(), ws.size());
  Report r;
  r.checks.push_back(check_f32("received", out, ref, kF32Softmax));
  return r;
}

// attention_tail: each row against the keys from the position of its block's first row to its own;
// the output against the CPU (one call per block, the keys before the block's start masked), the
// log-sum-exp of every row and head against float64.
Report run_attention_tail(Rng& rng, const AttnSpec& s, int block) {
  const AttnData d = make_attention(rng, s);
  const int64_t n_q = s.n_q, hd = s.hd, group = s.n_head / s.n_head_kv;
  F ref(static_cast<size_t>(n_q * d.qs));
  for (int64_t b0 = 0; b0 < n_q; b0 += block) {
    const int64_t nb = std::min<int64_t>(block, n_q - b0), start = d.pos[static_cast<size_t>(b0)];
    U8 valid(static_cast<size_t>(s.n_kv), 0);
    for (int64_t j = start; j < s.n_kv; ++j) valid[static_cast<size_t>(j)] = 1;
    cpu::attention(d.q.data() + b0 * d.qs, d.pos.data() + b0, nb, d.k.data(), d.v.data(), s.n_kv, valid.data(), d.cp,
                   ref.data() + b0 * d.qs);
  }
  D lse_ref(static_cast<size_t>(n_q * s.n_head));
  const double scale = d.gp.scale;
  std::vector<double> sc;
  for (int64_t i = 0; i < n_q; ++i) {
    const int64_t start = d.pos[static_cast<size_t>((i / block) * block)], p = d.pos[static_cast<size_t>(i)];
    for (int h = 0; h < s.n_head; ++h) {
      const float* qr = d.q.data() + i * d.qs + h * hd;
      sc.clear();
      double mx = -INFINITY;
      for (int64_t j = start; j <= p; ++j) {
        const float* kr = d.k.data() + j * d.ks + (h / group) * hd;
        double dot = 0;
        for (int64_t e = 0; e < hd; ++e) dot += static_cast<double>(qr[e]) * kr[e];
        sc.push_back(dot * scale);
        mx = std::max(mx, dot * scale);
      }
      double sum = 0;
      for (double x : sc) sum += std::exp(x - mx);
      lse_ref[static_cast<size_t>(i * s.n_head + h)] = mx + std::log(sum);
    }
  }
  Dev<uint16_t> dq = dev_bf16(d.q), dk = dev_bf16(d.k), dv = dev_bf16(d.v);
  Dev<int32_t> dpos(d.pos);
  Dev<uint16_t> out(ref.size());
  Dev<float> lse(lse_ref.size());
  cu::attention_tail(dq.get(), dpos.get(), n_q, dk.get(), dv.get(), s.n_kv, d.gp, block, out.get(), lse.get());
  Report r;
  r.checks.push_back(check_bf16("out", out, ref, kBf16, Scale::PerHead, s.hd));
  r.checks.push_back(check_f32("lse", lse, lse_ref, kLse));
  return r;
}

// attention_merge on random partial results: log-sum-exps with some -inf on either side (and
// rows where both are), blocks whose first position is 0 (their part is ignored).
Report run_attention_merge(Rng& rng, int64_t n_q, int n_head, int hd, int block, bool from0) {
  const int64_t n_kv = n_q * 3 + 5, nb = (n_q + block - 1) / block, row = int64_t{n_head} * hd;
  const I32 pos = positions(rng, from0 ? Layout::SubsetFrom0 : Layout::SubsetNo0, n_kv, n_q);
  const F o = rng.bf16(static_cast<size_t>(n_q * row), -1, 1), part = rng.bf16(o.size(), -1, 1);
  F lse = rng.uniform(static_cast<size_t>(n_q * n_head), -4, 8);
  F lse_part = rng.uniform(static_cast<size_t>(nb * block * n_head), -4, 8);
  for (auto& x : lse)
    if (rng.chance(0.1)) x = -kInf;
  for (auto& x : lse_part)
    if (rng.chance(0.1)) x = -kInf;
  D ref(o.size());
  for (int64_t i = 0; i < n_q; ++i) {
    const int64_t b = i / block, rr = i % block;
    for (int h = 0; h < n_head; ++h) {
      const double la = lse[static_cast<size_t>(i * n_head + h)];
      const double lb = pos[static_cast<size_t>(b * block)] > 0 ? lse_part[static_cast<size_t>((b * n_head + h) * block + rr)] : -INFINITY;
      const double m = std::max(la, lb);
      const double wa = la == -INFINITY ? 0 : std::exp(la - m), wb = lb == -INFINITY ? 0 : std::exp(lb - m);
      const double inv = wa + wb > 0 ? 1 / (wa + wb) : 0;
      for (int e = 0; e < hd; ++e) {
        const auto at = static_cast<size_t>(i * row + h * hd + e);
        ref[at] = (wa * o[at] + wb * part[at]) * inv;
      }
    }
  }
  Dev<uint16_t> dout = dev_bf16(o), dpart = dev_bf16(part);
  Dev<float> dlse(lse), dlse_part(lse_part);
  Dev<int32_t> dpos(pos);
  cu::attention_merge(dout.get(), dlse.get(), dpart.get(), dlse_part.get(), dpos.get(), n_q, n_head, hd, block);
  Report r;
  r.checks.push_back(check_bf16("out", dout, ref, kBf16));
  return r;
}

// The cuDNN routes must decline what they cannot do, leaving the output alone; needs no cuDNN.
enum class Refusal { DenseWindow, DenseMoreQueriesThanKeys, DenseHeadDimNot8, SubsetWindow, SubsetHeadDim96 };

Report run_cudnn_refusal(Rng& rng, Refusal what) {
  AttnSpec s{4, 2, 64, 100, 100};
  if (what == Refusal::DenseWindow || what == Refusal::SubsetWindow) s.window = 16;
  if (what == Refusal::DenseHeadDimNot8) s.hd = 100;
  if (what == Refusal::SubsetHeadDim96) s.hd = 96;
  const bool subset = what == Refusal::SubsetWindow || what == Refusal::SubsetHeadDim96;
  if (subset) s.layout = Layout::Subset, s.n_q = 40;
  const AttnData d = make_attention(rng, s);
  const int64_t n_q = what == Refusal::DenseMoreQueriesThanKeys ? s.n_kv + 1 : s.n_q;
  Dev<uint16_t> dq = dev_bf16(rng.bf16(static_cast<size_t>(n_q * d.qs), -2, 2)), dk = dev_bf16(d.k), dv = dev_bf16(d.v);
  Dev<int32_t> dpos(d.pos);
  Dev<uint16_t> out(static_cast<size_t>(n_q * d.qs));
  const bool ran = subset ? cu::attention_subset(dq.get(), dpos.get(), d.pos.data(), n_q, dk.get(), dv.get(), s.n_kv, d.gp, out.get())
                          : cu::attention_dense(dq.get(), n_q, dk.get(), dv.get(), s.n_kv, d.gp, out.get());
  Report r;
  Check c = check_untouched("output left alone", out);
  c.what = "declined, output left alone";
  if (ran) {
    c.bad += 1;
    c.note += (c.note.empty() ? "" : "; ") + std::string("returned true");
  }
  r.checks.push_back(c);
  return r;
}

// --- GEMM ----------------------------------------------------------------------------------------

enum class GemmOut { F32, Bf16, Accumulate };

Report run_gemm(Rng& rng, GemmOut kind, int64_t m, int64_t n, int64_t k, int64_t ldy_arg, bool gemv = true) {
  struct GemvSwitch {  // restored on every exit, a failed check's too
    bool was = cu::gemv_enabled();
    explicit GemvSwitch(bool on) { cu::set_gemv_enabled(on); }
    ~GemvSwitch() { cu::set_gemv_enabled(was); }
  } gemv_switch(gemv);
  const int64_t ldy = ldy_arg ? ldy_arg : n;
  const F x = rng.bf16(static_cast<size_t>(m * k), -1, 1), w = rng.bf16(static_cast<size_t>(n * k), -1, 1);
  const F y0 = rng.uniform(static_cast<size_t>(m * n), -1, 1);
  D ref(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = kind == GemmOut::Accumulate ? y0[static_cast<size_t>(i * n + j)] : 0.0;
      const float* xr = x.data() + i * k;
      const float* wr = w.data() + j * k;
      for (int64_t t = 0; t < k; ++t) acc += static_cast<double>(xr[t]) * wr[t];
      ref[static_cast<size_t>(i * n + j)] = acc;
    }
  Dev<uint16_t> dx = dev_bf16(x), dw = dev_bf16(w);
  Report r;
  // The m x n values out of rows of ldy; the padding columns must still be poisoned.
  auto unpad = [&](const auto& all, int64_t* outside, auto to_float) {
    F got(static_cast<size_t>(m * n));
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < ldy; ++j) {
        const auto at = static_cast<size_t>(i * ldy + j);
        if (j < n) got[static_cast<size_t>(i * n + j)] = to_float(all[at]);
        else *outside += is_poison(all[at]) ? 0 : 1;
      }
    return got;
  };
  int64_t outside = 0;
  if (kind == GemmOut::Bf16) {
    Dev<uint16_t> y(static_cast<size_t>(m * ldy));
    cu::gemm(dx.get(), dw.get(), m, n, k, y.get(), ldy_arg);
    const F got = unpad(y.fetch(&outside), &outside, [](uint16_t b) { return cpu::bf16_to_fp32(b); });
    r.checks.push_back(compare("y (bf16)", got, ref, kBf16Gemm));
  } else if (kind == GemmOut::F32) {
    Dev<float> y(static_cast<size_t>(m * ldy));
    cu::gemm(dx.get(), dw.get(), m, n, k, y.get(), ldy_arg);
    const F got = unpad(y.fetch(&outside), &outside, [](float f) { return f; });
    r.checks.push_back(compare("y (f32)", got, ref, kF32Gemm));
  } else {
    Dev<float> y(y0);
    cu::gemm_accumulate(dx.get(), dw.get(), m, n, k, y.get());
    const F got = y.fetch(&outside);
    r.checks.push_back(compare("y + x W^T", got, ref, kF32Gemm));
  }
  add_outside(r.checks.back(), outside);
  return r;
}

// --- DASH's topk decision ----------------------------------------------------------------------

enum class Keep { None, Third, All, MoreThanEligible };

// Scores from a few values (many ties); eligibility with holes (or none given: all rows).
Report run_topk(Rng& rng, int64_t n, Keep keep, bool with_eligible) {
  F score(static_cast<size_t>(n));
  for (auto& x : score) x = static_cast<float>(rng.below(17)) * 0.25f - 2.f;
  U8 elig(static_cast<size_t>(n), 1);
  if (with_eligible) {
    for (auto& e : elig) e = rng.chance(0.8) ? 1 : 0;
    for (int64_t i = 0; i < std::min<int64_t>(4, n); ++i) elig[static_cast<size_t>(i)] = 0;  // protected tokens
  }
  I32 order;
  for (int64_t i = 0; i < n; ++i)
    if (elig[static_cast<size_t>(i)]) order.push_back(static_cast<int32_t>(i));
  const auto n_elig = static_cast<int64_t>(order.size());
  const int64_t n_keep = keep == Keep::None ? 0 : keep == Keep::Third ? n_elig / 3 : keep == Keep::All ? n_elig : n_elig + 3;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return score[static_cast<size_t>(a)] > score[static_cast<size_t>(b)]; });
  U8 want(static_cast<size_t>(n), 0);
  for (size_t rank = static_cast<size_t>(std::min(n_keep, n_elig)); rank < order.size(); ++rank) want[static_cast<size_t>(order[rank])] = 1;
  Dev<float> ds(score);
  Dev<uint8_t> de(elig), halt(static_cast<size_t>(n));
  cu::topk_halt_flags(ds.get(), with_eligible ? de.get() : nullptr, n, n_keep, halt.get());
  int64_t outside = 0;
  Report r;
  r.checks.push_back(compare_bits("halt flags", halt.fetch(&outside), want));
  add_outside(r.checks.back(), outside);
  return r;
}

// --- the table ---------------------------------------------------------------------------------

std::string num(double v) {  // 2.5 -> "2p5", 0.25 -> "0p25"
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  std::replace(s.begin(), s.end(), '.', 'p');
  std::replace(s.begin(), s.end(), '-', 'm');
  return s;
}

std::string attn_name(const AttnSpec& s) {
  std::string n = "hd" + std::to_string(s.hd) + "_h" + std::to_string(s.n_head) + "kv" + std::to_string(s.n_head_kv) + "_keys" +
                  std::to_string(s.n_kv) + "_q" + std::to_string(s.n_q);
  switch (s.layout) {
    case Layout::Last: n += s.n_q == s.n_kv ? "_causal" : "_prefix"; break;
    case Layout::Subset: n += "_subset"; break;
    case Layout::SubsetFrom0: n += "_subset_from0"; break;
    case Layout::SubsetNo0: n += "_subset_no0"; break;
  }
  if (s.window) n += "_win" + std::to_string(s.window);
  if (s.holes > 0) n += "_holes" + std::to_string(static_cast<int>(std::lround(s.holes * 100)));
  if (s.extra > 0) n += "_spare" + std::to_string(s.extra);
  return n;
}

std::vector<Case> build_table() {
  std::vector<Case> t;
  auto add = [&](std::string name, std::function<Report(Rng&)> f, bool cudnn = false) {
    t.push_back(Case{std::move(name), cudnn, std::move(f)});
  };
  const std::string rows = "_rows", dim_ = "_dim";

  // rmsnorm: the float4 kernels (dim % 4 == 0, up to 2048 and up to 8192) and the plain one
  // (other dims, larger ones, misaligned pointers).
  for (int64_t n : {1, 17, 129})
    for (int64_t dim : {3, 100, 1024, 2048, 2052, 4097, 8192, 8200}) {
      add("rmsnorm_bf16" + rows + std::to_string(n) + dim_ + std::to_string(dim),
          [=](Rng& g) { return run_rmsnorm(g, RmsOut::Bf16, n, dim, true, false); });
      add("rmsnorm_f32" + rows + std::to_string(n) + dim_ + std::to_string(dim),
          [=](Rng& g) { return run_rmsnorm(g, RmsOut::F32, n, dim, true, false); });
    }
  for (int64_t n : {3, 100})
    for (int64_t dim : {100, 4096, 4097})
      add("rmsnorm_f32_inplace_noweight" + rows + std::to_string(n) + dim_ + std::to_string(dim),
          [=](Rng& g) { return run_rmsnorm(g, RmsOut::F32InPlace, n, dim, false, false); });
  add("rmsnorm_f32_misaligned_rows17_dim1024", [](Rng& g) { return run_rmsnorm(g, RmsOut::F32, 17, 1024, true, true); });
  add("rmsnorm_bf16_misaligned_rows3_dim4096", [](Rng& g) { return run_rmsnorm(g, RmsOut::Bf16, 3, 4096, true, true); });
  add("rmsnorm_bf16_noweight_rows100_dim2048", [](Rng& g) { return run_rmsnorm(g, RmsOut::Bf16, 100, 2048, false, false); });

  // add_residual with every combination of its optional outputs that the engine uses.
  struct Res {
    const char* name;
    ResidualSpec s;
  };
  for (const Res& v : {Res{"all", {true, true, true, true}}, Res{"plain", {false, false, false, false}},
                       Res{"norms", {true, true, false, false}}, Res{"normu_next", {true, false, true, true}},
                       Res{"next_noweight", {false, false, true, false}}})
    for (auto [n, d] : {std::pair<int64_t, int64_t>{1, 100}, {17, 1537}, {129, 4096}, {3, 3}})
      add(std::string("add_residual_") + v.name + rows + std::to_string(n) + dim_ + std::to_string(d),
          [=](Rng& g) { return run_add_residual(g, n, d, v.s); });

  for (auto [n, d] : {std::pair<int64_t, int64_t>{1, 3}, {17, 100}, {100, 4097}, {23, 1537}})
    add("block_delta" + rows + std::to_string(n) + dim_ + std::to_string(d), [=](Rng& g) { return run_block_delta(g, n, d); });
  for (auto [n, d] : {std::pair<int64_t, int64_t>{1, 1}, {3, 100}, {129, 4097}, {17, 8192}})
    add("row_l2_norms" + rows + std::to_string(n) + dim_ + std::to_string(d), [=](Rng& g) { return run_row_l2(g, n, d); });

  // Gated activations: the 8-wide kernel (n_ff % 8 == 0, aligned) and the plain one.
  for (bool gelu : {false, true}) {
    const std::string op = gelu ? "geglu_tanh" : "swiglu";
    for (auto [n, ff] : {std::pair<int64_t, int64_t>{1, 8}, {17, 1003}, {19, 1024}, {100, 4096}, {3, 3}})
      add(op + rows + std::to_string(n) + "_ff" + std::to_string(ff), [=](Rng& g) { return run_glu(g, gelu, n, ff, false); });
    add(op + "_misaligned_rows17_ff1024", [=](Rng& g) { return run_glu(g, gelu, 17, 1024, true); });
    for (int64_t m : {1, 2, 4})
      add("gemv_" + op + "_m" + std::to_string(m) + "_ff1000_k1032", [=](Rng& g) { return run_gemv_glu(g, gelu, m, 1000, 1032); });
    add("gemv_" + op + "_m3_ff7_k8", [=](Rng& g) { return run_gemv_glu(g, gelu, 3, 7, 8); });
    const std::string op32 = gelu ? "gelu_tanh_mul" : "silu_mul";
    for (int64_t n : {1, 1000, 100003}) add(op32 + "_n" + std::to_string(n), [=](Rng& g) { return run_act_f32(g, gelu, n); });
  }
  for (int64_t n : {1, 17, 100003}) add("add_inplace_n" + std::to_string(n), [=](Rng& g) { return run_add_inplace(g, n); });
  for (int64_t n : {1, 17, 100003}) add("scale_inplace_n" + std::to_string(n), [=](Rng& g) { return run_scale_inplace(g, n, 0.37f); });
  for (int64_t n : {12, 1000, 100003}) add("f32_to_bf16_n" + std::to_string(n), [=](Rng& g) { return run_f32_to_bf16(g, n); });
  add("bf16_to_f32_all_patterns", [](Rng& g) { return run_bf16_to_f32(g); });

  // Rows.
  for (auto [dim, n, scale] : {std::tuple<int64_t, int64_t, float>{77, 50, 2.5f}, {1, 1, 1.f}, {4096, 129, 64.f}, {100, 17, 0.5f}})
    add("embed_rows_vocab301" + dim_ + std::to_string(dim) + rows + std::to_string(n) + "_scale" + num(scale),
        [=](Rng& g) { return run_embed(g, 301, dim, n, scale, false); });
  add("embed_rows_out_of_range_vocab301_dim77_rows50", [](Rng& g) { return run_embed(g, 301, 77, 50, 1.f, true); });
  for (bool bf16 : {false, true})
    for (auto [n_src, n, width] : {std::tuple<int64_t, int64_t, int64_t>{50, 6, 77}, {1, 1, 1}, {300, 129, 4096}, {17, 100, 3}})
      add(std::string("gather_rows_") + (bf16 ? "bf16" : "f32") + "_src" + std::to_string(n_src) + rows + std::to_string(n) +
              "_width" + std::to_string(width),
          [=](Rng& g) { return run_gather(g, bf16, n_src, n, width); });
  for (auto [n_dst, n, width] : {std::tuple<int64_t, int64_t, int64_t>{50, 6, 77}, {1, 1, 1}, {300, 129, 4096}, {100, 100, 3}})
    add("scatter_rows_dst" + std::to_string(n_dst) + rows + std::to_string(n) + "_width" + std::to_string(width),
        [=](Rng& g) { return run_scatter(g, n_dst, n, width); });
  for (auto [n_mask, n, v] : {std::tuple<int64_t, int64_t, int>{100, 6, 0}, {1, 1, 1}, {4099, 1000, 1}, {70000, 3, 0x5A}})
    add("set_bytes_at_mask" + std::to_string(n_mask) + "_n" + std::to_string(n) + "_v" + std::to_string(v),
        [=](Rng& g) { return run_set_bytes(g, n_mask, n, static_cast<uint8_t>(v)); });

  // Heads: bias, per-head RMSNorm, RoPE (GPT-J pairs and NeoX halves, partial rotation,
  // frequency factors, linear scaling), bf16 scattered into cache slots or f32 in place.
  const PrepSpec preps[] = {
      {3, 8, 8, false, false, false, false, 500000.f, 1.f, 41, 16, true},
      {3, 64, 64, true, true, true, false, 500000.f, 1.f, 41, 16, true},
      {3, 128, 128, false, false, true, false, 500000.f, 0.25f, 41, 0, false},
      {3, 128, 64, true, true, false, true, 500000.f, 1.f, 17, 16, true},
      {3, 256, 256, true, true, false, false, 10000.f, 1.f, 41, 0, true},
      {3, 96, 32, false, false, false, false, 10000.f, 1.f, 41, 16, false},
      {2, 80, 0, false, true, true, false, 10000.f, 1.f, 17, 3, true},  // no RoPE: no positions passed
      {12, 128, 128, true, true, true, true, 500000.f, 1.f, 17, 0, true},  // more heads than warps
      {1, 64, 64, false, true, false, false, 10000.f, 1.f, 1, 0, false},
      {5, 100, 50, true, false, true, false, 10000.f, 0.5f, 3, 7, true},
  };
  for (const PrepSpec& s : preps)
    for (bool bf16 : {true, false}) {
      std::string n = std::string("prep_heads") + (bf16 ? "_bf16" : "_f32") + "_hd" + std::to_string(s.hd) + "_rot" +
                      std::to_string(s.n_rot) + (s.neox ? "_neox" : "") + (s.norm ? "_norm" : "") + (s.bias ? "_bias" : "") +
                      (s.factors ? "_factors" : "") + (s.freq_scale != 1.f ? "_fscale" + num(s.freq_scale) : "") + "_heads" +
                      std::to_string(s.heads) + rows + std::to_string(s.n) + (s.pad ? "_pad" + std::to_string(s.pad) : "") +
                      (bf16 && s.scatter ? "_scatter" : "");
      add(n, [=](Rng& g) { return run_prep_heads(g, s, bf16); });
    }

  // Q, K and V in one launch against three prep_heads: Llama (GQA 4:1), Qwen (bias, 7:1), Gemma
  // (per-head norms, MQA), a partial rotation, no rotation, one row and padded rows.
  const QkvSpec qkvs[] = {
      {32, 8, 128, 128, true, false, false, 1, 0},    {28, 4, 128, 128, true, false, true, 3, 0},
      {4, 1, 256, 256, true, true, false, 2, 16},     {12, 4, 64, 32, false, true, true, 17, 8},
      {6, 2, 64, 0, false, false, true, 5, 0},        {3, 3, 80, 80, false, true, true, 1, 3},
  };
  for (const QkvSpec& s : qkvs)
    add("prep_qkv_h" + std::to_string(s.n_head) + "_kv" + std::to_string(s.n_head_kv) + "_hd" + std::to_string(s.hd) + "_rot" +
            std::to_string(s.n_rot) + (s.neox ? "_neox" : "") + (s.norm ? "_norm" : "") + (s.bias ? "_bias" : "") + rows +
            std::to_string(s.n) + (s.pad ? "_pad" + std::to_string(s.pad) : ""),
        [=](Rng& g) { return run_prep_qkv(g, s); });

  // The same with the Q/K/V GEMV doing it (1 to 4 rows): Qwen (bias, 7:1, NeoX pairs), Llama 3.1
  // (frequency factors, interleaved pairs), a partial rotation, widths that leave the last CTA
  // partial (30 columns), no rotation; on a carried norm and on x.
  const QkvGemvSpec qkv_gemvs[] = {
      {28, 4, 128, 128, true, true, false, true, 1, 1032}, {32, 8, 128, 128, false, false, true, true, 2, 520},
      {4, 2, 32, 16, true, true, true, false, 4, 264},     {4, 2, 32, 16, false, false, false, true, 3, 64},
      {3, 1, 6, 4, false, true, false, false, 3, 8},       {3, 1, 6, 4, true, false, true, true, 1, 8},
      {2, 2, 64, 0, false, true, false, true, 2, 64},
  };
  for (const QkvGemvSpec& s : qkv_gemvs)
    add("gemv_qkv_h" + std::to_string(s.n_head) + "_kv" + std::to_string(s.n_head_kv) + "_hd" + std::to_string(s.hd) + "_rot" +
            std::to_string(s.n_rot) + (s.neox ? "_neox" : "") + (s.bias ? "_bias" : "") + (s.factors ? "_factors" : "") +
            (s.carried ? "_carried" : "") + "_m" + std::to_string(s.m) + "_k" + std::to_string(s.k),
        [=](Rng& g) { return run_qkv_epilogue(g, s); });

  // Attention, our kernels: full causal, queries after a cached prefix, sliding windows, query
  // subsets with gaps, validity masks with holes (and rows that see nothing), GQA / MQA, head
  // dims 64/128/256 (tensor-core kernel) and others (simple kernel), the simple kernel forced.
  using L = Layout;
  const AttnSpec ours[] = {
      {4, 4, 64, 300, 300},
      {8, 2, 128, 517, 517},
      {2, 1, 256, 200, 200},
      {4, 1, 128, 2100, 2100},
      {4, 2, 128, 333, 1},
      {2, 1, 64, 1, 1},
      {4, 2, 128, 3, 3},
      {4, 2, 64, 700, 90},
      {4, 4, 128, 1000, 129},
      {8, 1, 128, 129, 17},
      {4, 2, 128, 400, 400, L::Last, 100},
      {2, 1, 64, 300, 300, L::Last, 7},
      {2, 2, 256, 333, 333, L::Last, 64},
      {4, 4, 64, 17, 17, L::Last, 1},
      {2, 2, 128, 100, 100, L::Last, 1000},
      {8, 2, 128, 1000, 333, L::Subset},
      {4, 1, 64, 800, 150, L::Subset, 50},
      {2, 1, 256, 500, 77, L::Subset},
      {4, 2, 64, 257, 100, L::SubsetFrom0},
      {4, 2, 128, 600, 129, L::SubsetNo0},
      {4, 2, 128, 600, 600, L::Last, 0, 0.3},
      {4, 4, 64, 900, 300, L::Subset, 0, 0.5},
      {2, 1, 256, 300, 300, L::Last, 40, 0.3},
      {4, 2, 128, 500, 100, L::Last, 0, 0.3},
      {8, 4, 8, 200, 200},
      {3, 1, 96, 300, 100, L::Subset, 0, 0.2},
      {6, 2, 80, 129, 129, L::Last, 0, 0.2},
      {5, 5, 40, 64, 64},
      {2, 1, 200, 150, 40, L::Subset, 30},
  };
  for (const AttnSpec& s : ours) add("attention_" + attn_name(s), [=](Rng& g) { return run_attention(g, s, AttnRoute::Ours); });
  // Decoding (attention_decode: keys split over CTAs, merged by log-sum-exp): one to four rows,
  // the Llama-3 8B (32/8) and Qwen2.5 7B (28/4) groups, MQA groups wider than one CTA's eight query
  // vectors, every head dim, windows, dropped slots, a cache longer than the positions (NaN there),
  // key counts that are not multiples of the chunk rounding, and rows with gaps between them.
  const AttnSpec decode[] = {
      {32, 8, 128, 4096, 1},
      {32, 8, 128, 4100, 1, L::Last, 0, 0, 3000},
      {28, 4, 128, 5003, 1, L::Last, 0, 0, 77},
      {28, 4, 128, 1, 1},
      {14, 2, 64, 777, 1},
      {9, 3, 64, 17, 1, L::Last, 0, 0, 100},
      {4, 1, 256, 2049, 1, L::Last, 512},
      {4, 1, 256, 600, 1, L::Last, 512, 0.3},
      {32, 8, 128, 3000, 1, L::Last, 0, 0.4, 1000},
      {16, 1, 128, 1500, 1},
      {16, 1, 64, 300, 3},
      {32, 8, 128, 2000, 4},
      {28, 4, 128, 999, 2, L::Last, 0, 0.2, 50},
      {8, 2, 128, 1000, 4, L::Subset},
      {4, 2, 64, 500, 3, L::SubsetNo0, 100},
      {2, 1, 256, 40, 2, L::Last, 0, 0.5},
      {8, 8, 128, 20000, 1},
  };
  for (const AttnSpec& s : decode)
    add("attention_decode_" + attn_name(s), [=](Rng& g) { return run_attention(g, s, AttnRoute::Decode); });
  for (const AttnSpec& s : decode)
    add("attention_decode_fp8_" + attn_name(s), [=](Rng& g) { return run_attention(g, s, AttnRoute::DecodeFp8); });
  const AttnSpec simple[] = {
      {4, 2, 128, 400, 400, L::Last, 30, 0.1},
      {2, 1, 256, 300, 50, L::Subset},
      {4, 2, 64, 300, 300, L::Last, 0, 0.3},
      {8, 1, 128, 129, 17},
  };
  for (const AttnSpec& s : simple)
    add("attention_simple_" + attn_name(s), [=](Rng& g) { return run_attention(g, s, AttnRoute::Simple); });

  // cuDNN: the dense case (full causal, after a prefix) and DASH's subset case. must_take: shapes
  // cuDNN has taken on the H200 (the earlier hand-written tests); the others may be declined.
  struct Cudnn {
    AttnSpec s;
    bool must_take;
  };
  for (const Cudnn& v : {Cudnn{{4, 4, 64, 300, 300}, true}, Cudnn{{8, 2, 128, 517, 517}, true}, Cudnn{{2, 1, 256, 200, 200}, true},
                         Cudnn{{4, 1, 128, 2100, 2100}, true}, Cudnn{{4, 2, 64, 700, 90}, true}, Cudnn{{4, 4, 128, 1000, 129}, true},
                         Cudnn{{8, 2, 128, 333, 1}, false}, Cudnn{{4, 2, 64, 17, 17}, false}})
    add("attention_dense_" + attn_name(v.s), [=](Rng& g) { return run_attention(g, v.s, AttnRoute::Cudnn, v.must_take); }, true);
  for (const Cudnn& v : {Cudnn{{8, 2, 128, 1000, 333, L::Subset}, true}, Cudnn{{4, 1, 64, 2000, 700, L::Subset}, true},
                         Cudnn{{2, 1, 256, 500, 77, L::Subset}, true}, Cudnn{{4, 4, 128, 300, 128, L::Subset}, true},
                         Cudnn{{4, 2, 128, 600, 300, L::SubsetFrom0}, false}, Cudnn{{4, 2, 64, 600, 257, L::SubsetNo0}, false},
                         Cudnn{{2, 1, 128, 100, 1, L::Subset}, false}})
    add("attention_subset_" + attn_name(v.s), [=](Rng& g) { return run_attention(g, v.s, AttnRoute::Cudnn, v.must_take); }, true);
  struct Ref {
    const char* name;
    Refusal what;
  };
  for (const Ref& v : {Ref{"attention_dense_declines_window", Refusal::DenseWindow},
                       Ref{"attention_dense_declines_more_queries_than_keys", Refusal::DenseMoreQueriesThanKeys},
                       Ref{"attention_dense_declines_hd100", Refusal::DenseHeadDimNot8},
                       Ref{"attention_subset_declines_window", Refusal::SubsetWindow},
                       Ref{"attention_subset_declines_hd96", Refusal::SubsetHeadDim96}})
    add(v.name, [=](Rng& g) { return run_cudnn_refusal(g, v.what); });

  // The pieces of attention_subset.
  struct Tail {
    AttnSpec s;
    int block;
  };
  for (const Tail& v : {Tail{{4, 2, 128, 900, 300, L::Subset}, 128}, Tail{{8, 2, 64, 700, 200, L::SubsetFrom0}, 64},
                        Tail{{2, 1, 256, 500, 129, L::SubsetNo0}, 128}, Tail{{4, 4, 128, 300, 300, L::Subset}, 128},
                        Tail{{4, 1, 64, 50, 1, L::Subset}, 64}})
    add("attention_tail_" + attn_name(v.s) + "_block" + std::to_string(v.block),
        [=](Rng& g) { return run_attention_tail(g, v.s, v.block); });
  struct Merge {
    int64_t n_q;
    int heads, hd, block;
    bool from0;
  };
  for (const Merge& v : {Merge{300, 4, 128, 128, true}, Merge{129, 2, 64, 64, false}, Merge{1, 3, 256, 128, false},
                         Merge{257, 8, 64, 128, true}})
    add("attention_merge_rows" + std::to_string(v.n_q) + "_heads" + std::to_string(v.heads) + "_hd" + std::to_string(v.hd) +
            "_block" + std::to_string(v.block) + (v.from0 ? "_from0" : "_no0"),
        [=](Rng& g) { return run_attention_merge(g, v.n_q, v.heads, v.hd, v.block, v.from0); });

  const AttnSpec received[] = {
      {4, 4, 64, 300, 300},
      {8, 2, 128, 1000, 333, L::Subset},
      {4, 1, 64, 800, 150, L::Subset, 50},
      {4, 2, 128, 600, 600, L::Last, 0, 0.3},
      {4, 4, 64, 900, 300, L::Subset, 0, 0.5},
      {3, 1, 96, 300, 100, L::Subset, 0, 0.2},
      {8, 4, 8, 200, 200},
      {2, 1, 64, 1, 1},
      {4, 2, 128, 333, 1},
  };
  for (const AttnSpec& s : received)
    add("attention_received_" + attn_name(s), [=](Rng& g) { return run_attention_received(g, s); });

  // GEMM: odd shapes (cuBLASLt or its cublasGemmEx fallback), a row stride, fp32 and bf16 out,
  // and the accumulating form.
  struct Gemm {
    int64_t m, n, k, ldy;
  };
  for (const Gemm& v : {Gemm{1, 64, 64, 0}, Gemm{7, 1000, 320, 0}, Gemm{129, 515, 1000, 0}, Gemm{300, 256, 2048, 300},
                        Gemm{33, 17, 35, 0}, Gemm{5000, 128, 64, 0}, Gemm{1, 3, 17, 0}, Gemm{100, 129, 17, 0},
                        Gemm{17, 100, 64, 104}})
    for (GemmOut kind : {GemmOut::F32, GemmOut::Bf16})
      add(std::string("gemm_") + (kind == GemmOut::F32 ? "f32" : "bf16") + "_m" + std::to_string(v.m) + "_n" + std::to_string(v.n) +
              "_k" + std::to_string(v.k) + (v.ldy ? "_ldy" + std::to_string(v.ldy) : ""),
          [=](Rng& g) { return run_gemm(g, kind, v.m, v.n, v.k, v.ldy); });
  for (const Gemm& v : {Gemm{1, 64, 64, 0}, Gemm{17, 100, 35, 0}, Gemm{129, 515, 1000, 0}, Gemm{300, 256, 2048, 0}})
    add("gemm_accumulate_m" + std::to_string(v.m) + "_n" + std::to_string(v.n) + "_k" + std::to_string(v.k),
        [=](Rng& g) { return run_gemm(g, GemmOut::Accumulate, v.m, v.n, v.k, 0); });
  // Products of 1 to 4 rows: the GEMV (k a multiple of 8; rows of W shorter than one pass of the
  // warp, between one and four passes, and longer with a remainder; a row stride), and the same
  // shapes through cuBLAS with the GEMV switched off.
  for (const Gemm& v : {Gemm{1, 4099, 4104, 0}, Gemm{2, 33, 8, 0}, Gemm{3, 1000, 264, 1003}, Gemm{4, 515, 2056, 0},
                        Gemm{1, 1, 1032, 0}, Gemm{4, 7, 9216, 12}})
    for (bool gemv : {true, false}) {
      const std::string shape = "_m" + std::to_string(v.m) + "_n" + std::to_string(v.n) + "_k" + std::to_string(v.k) +
                                (v.ldy ? "_ldy" + std::to_string(v.ldy) : "");
      const std::string path = gemv ? "gemv" : "gemv_off";
      for (GemmOut kind : {GemmOut::F32, GemmOut::Bf16})
        add(path + (kind == GemmOut::F32 ? "_f32" : "_bf16") + shape,
            [=](Rng& g) { return run_gemm(g, kind, v.m, v.n, v.k, v.ldy, gemv); });
      if (!v.ldy) add(path + "_accumulate" + shape, [=](Rng& g) { return run_gemm(g, GemmOut::Accumulate, v.m, v.n, v.k, 0, gemv); });
    }

  // A norm carried from a residual-adding GEMV to the next product, 1 to 4 rows: norm widths of
  // whole CTAs of 4 columns and with a partial last one (1000 = 250, 520 = 130, 8 = 2).
  struct CarryShape {
    int64_t m, d, k, n_out;
  };
  for (const CarryShape& v : {CarryShape{1, 4096, 1032, 1000}, CarryShape{3, 1000, 264, 515}, CarryShape{4, 520, 2056, 7},
                              CarryShape{2, 8, 8, 33}})
    for (Carried kind : {Carried::F32, Carried::Silu, Carried::Gelu}) {
      const char* kn = kind == Carried::F32 ? "f32" : kind == Carried::Silu ? "swiglu" : "geglu";
      add(std::string("norm_carry_") + kn + "_m" + std::to_string(v.m) + "_d" + std::to_string(v.d) + "_k" + std::to_string(v.k) +
              "_n" + std::to_string(v.n_out),
          [=](Rng& g) { return run_norm_carry(g, kind, v.m, v.d, v.k, v.n_out); });
    }

  // topk_halt_flags against a stable sort on the host.
  for (int64_t n : {1, 7, 300, 4099, 70000})
    for (Keep keep : {Keep::None, Keep::Third, Keep::All, Keep::MoreThanEligible})
      for (bool elig : {true, false}) {
        const char* kn = keep == Keep::None ? "none" : keep == Keep::Third ? "third" : keep == Keep::All ? "all" : "more";
        add("topk_halt_flags_n" + std::to_string(n) + "_keep" + kn + (elig ? "_eligible" : "_all_eligible"),
            [=](Rng& g) { return run_topk(g, n, keep, elig); });
      }
  return t;
}

const std::vector<Case>& table() {
  static const std::vector<Case> t = build_table();
  return t;
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class OpCase : public ::testing::TestWithParam<Case> {};

TEST_P(OpCase, Matches) {
  const Case& c = GetParam();
  DASHLM_REQUIRE_CUDA();
  if (c.cudnn) DASHLM_REQUIRE_CUDNN();
  Rng rng(seed_of(c.name));
  const Report r = c.run(rng);
  if (!r.skip.empty()) GTEST_SKIP() << r.skip;
  ASSERT_FALSE(r.checks.empty());
  std::string line = "[ op-table ] " + c.name + ":";
  for (const Check& k : r.checks) {
    char buf[160];
    std::snprintf(buf, sizeof buf, " %s err %.3g (tol %.3g, %lld elems, %lld bad)%s", k.what.c_str(), k.err, k.tol,
                  static_cast<long long>(k.n), static_cast<long long>(k.bad), &k == &r.checks.back() ? "" : ";");
    line += buf;
    EXPECT_EQ(k.bad, 0) << c.name << " / " << k.what << ": " << k.note;
    EXPECT_LE(k.err, k.tol) << c.name << " / " << k.what << ": " << k.note;
  }
  std::printf("%s\n", line.c_str());
}

INSTANTIATE_TEST_SUITE_P(CudaOpTable, OpCase, ::testing::ValuesIn(table()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// --- the harness itself, on the host (runs without a GPU) ----------------------------------------

TEST(OpTableHarness, NamesAreUniqueAndValid) {
  std::set<std::string> seen;
  for (const Case& c : table()) {
    EXPECT_TRUE(seen.insert(c.name).second) << "duplicate case " << c.name;
    EXPECT_FALSE(c.name.empty());
    for (char ch : c.name) EXPECT_TRUE(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_') << c.name;
  }
}

TEST(OpTableHarness, NanAndUnwrittenNeverPass) {
  const F ref = {1.f, -2.f, 3.f, 0.5f};
  EXPECT_TRUE(compare("same", ref, ref, kExact).ok());
  F got = ref;
  got[2] = std::numeric_limits<float>::quiet_NaN();
  Check c = compare("nan", got, ref, 1e9);
  EXPECT_EQ(c.bad, 1);
  EXPECT_FALSE(c.ok());
  got[2] = cpu::bf16_to_fp32(0xFFFF);  // a poisoned bf16 element, never written
  EXPECT_FALSE(compare("poison", got, ref, 1e9).ok());
  got[2] = kInf;
  EXPECT_FALSE(compare("inf", got, ref, 1e9).ok());
  uint32_t poison_bits = 0xFFFFFFFFu;
  got[2] = std::bit_cast<float>(poison_bits);
  EXPECT_FALSE(compare("poison f32", got, ref, 1e9).ok());
  // A non-finite reference is reported, not compared.
  EXPECT_FALSE(compare("bad ref", ref, F{1.f, -2.f, NAN, 0.5f}, 1e9).ok());
  // The error: relative per element above the RMS, against the RMS below it.
  got = ref;
  got[0] = 1.01f;                          // |ref| 1 < rms ~1.89: 0.01 / 1.89
  EXPECT_NEAR(compare("rel", got, ref, 1).err, 0.01 / std::sqrt((1 + 4 + 9 + 0.25) / 4.0), 1e-6);
  EXPECT_NEAR(compare("self", got, ref, 1, Scale::Self).err, 0.01, 1e-6);
  EXPECT_FALSE(compare("size", F{1.f}, ref, 1e9).ok());
  // Per head: the relative L2 error of each segment, the largest of them.
  const F r2 = {3.f, 4.f, 0.f, 0.f};
  EXPECT_NEAR(compare("head", F{3.f, 4.5f, 0.f, 0.f}, r2, 1, Scale::PerHead, 2).err, 0.1, 1e-9);
  EXPECT_FALSE(compare("zero head", F{3.f, 4.f, 0.f, 1e-30f}, r2, 1e9, Scale::PerHead, 2).ok());
  EXPECT_FALSE(compare("nan head", F{3.f, NAN, 0.f, 0.f}, r2, 1e9, Scale::PerHead, 2).ok());
  EXPECT_FALSE(compare("seg", r2, r2, 1e9, Scale::PerHead, 3).ok());
  // Bit comparisons and the poison test.
  EXPECT_EQ(compare_bits("bits", U16{1, 2, 3}, U16{1, 2, 4}).err, 1);
  EXPECT_TRUE(is_poison(uint16_t{0xFFFF}));
  EXPECT_FALSE(is_poison(uint16_t{0xFF7F}));
  EXPECT_TRUE(is_poison(std::bit_cast<float>(poison_bits)));
  EXPECT_FALSE(is_poison(std::numeric_limits<float>::quiet_NaN()));
  Check o;
  add_outside(o, 3);
  EXPECT_FALSE(o.ok());
}

TEST(OpTableHarness, PositionLayouts) {
  Rng rng(1);
  for (Layout l : {Layout::Subset, Layout::SubsetFrom0, Layout::SubsetNo0}) {
    const I32 p = positions(rng, l, 1000, 333);
    ASSERT_EQ(p.size(), 333u);
    EXPECT_TRUE(std::is_sorted(p.begin(), p.end()));
    EXPECT_EQ(std::adjacent_find(p.begin(), p.end()), p.end());
    EXPECT_EQ(p.back(), 999);
    if (l == Layout::SubsetFrom0) {
      EXPECT_EQ(p.front(), 0);
    }
    if (l == Layout::SubsetNo0) {
      EXPECT_GT(p.front(), 0);
    }
  }
  EXPECT_EQ(positions(rng, Layout::Last, 10, 3), (I32{7, 8, 9}));
  EXPECT_EQ(positions(rng, Layout::Subset, 100, 1), (I32{99}));
  EXPECT_EQ(positions(rng, Layout::SubsetFrom0, 1, 1), (I32{0}));
}

}  // namespace
}  // namespace dashlm::test
