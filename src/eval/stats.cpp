#include "eval/stats.h"

#include <algorithm>
#include <vector>

#include "common/error.h"
#include "eval/eval.h"

namespace dashlm::eval::stats {

Interval wilson(int64_t successes, int64_t n, double z) {
  if (n <= 0 || successes < 0 || successes > n) fail("wilson: {} successes of {}", successes, n);
  const double nn = static_cast<double>(n), p = static_cast<double>(successes) / nn, z2 = z * z;
  const double centre = (p + z2 / (2 * nn)) / (1 + z2 / nn);
  const double half = z / (1 + z2 / nn) * std::sqrt(p * (1 - p) / nn + z2 / (4 * nn * nn));
  // At 0 and n the bound is exactly 0 or 1 (rounding would leave 1e-17 off).
  return {successes == 0 ? 0.0 : std::max(0.0, centre - half), successes == n ? 1.0 : std::min(1.0, centre + half)};
}

namespace {

// The continued fraction of the regularised incomplete beta function (modified Lentz).
double beta_continued_fraction(double a, double b, double x) {
  constexpr double kTiny = 1e-300, kEps = 1e-15;
  const double qab = a + b, qap = a + 1, qam = a - 1;
  double c = 1, d = 1 - qab * x / qap;
  if (std::fabs(d) < kTiny) d = kTiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= 1000; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = 1 + aa / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < kEps) break;
  }
  return h;
}

// I_x(a, b).
double incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * beta_continued_fraction(a, b, x) / a;
  return 1 - front * beta_continued_fraction(b, a, 1 - x) / b;
}

double mean_of(std::span<const double> x) {
  double s = 0;
  for (double v : x) s += v;
  return s / static_cast<double>(x.size());
}

double sd_of(std::span<const double> x, double mean) {
  double s = 0;
  for (double v : x) s += (v - mean) * (v - mean);
  return std::sqrt(s / static_cast<double>(x.size() - 1));
}

std::vector<double> differences(std::span<const double> x, std::span<const double> y, Paired* p) {
  if (x.size() != y.size()) fail("paired comparison of {} and {} values", x.size(), y.size());
  std::vector<double> d(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    d[i] = x[i] - y[i];
    p->higher += d[i] > 0;
    p->lower += d[i] < 0;
  }
  p->n = static_cast<int64_t>(d.size());
  p->diff = d.empty() ? NAN : mean_of(d);
  return d;
}

}  // namespace

double student_t_cdf(double t, double df) {
  if (!(df > 0)) fail("student_t_cdf: {} degrees of freedom", df);
  if (std::isnan(t)) return NAN;
  if (std::isinf(t)) return t > 0 ? 1.0 : 0.0;
  const double tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t));
  return t > 0 ? 1 - tail : tail;
}

double student_t_quantile(double p, double df) {
  if (!(p > 0 && p < 1)) fail("student_t_quantile: p = {}", p);
  if (p == 0.5) return 0;
  if (p < 0.5) return -student_t_quantile(1 - p, df);
  double lo = 0, hi = 1;
  while (student_t_cdf(hi, df) < p) hi *= 2;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, df) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

double sign_test_p(int64_t k, int64_t n) {
  if (k < 0 || k > n) fail("sign_test_p: {} of {}", k, n);
  if (n == 0) return 1;
  // P(X <= min(k, n - k)) for X ~ Binomial(n, 1/2), doubled; terms in logs (n may be large).
  const int64_t m = std::min(k, n - k);
  double tail = 0;
  for (int64_t i = 0; i <= m; ++i) {
    tail += std::exp(std::lgamma(static_cast<double>(n) + 1) - std::lgamma(static_cast<double>(i) + 1) -
                     std::lgamma(static_cast<double>(n - i) + 1) - static_cast<double>(n) * std::log(2.0));
  }
  return std::min(1.0, 2 * tail);
}

bool is_binary(std::span<const double> x) {
  return std::all_of(x.begin(), x.end(), [](double v) { return v == 0.0 || v == 1.0; });
}

MeanCI mean_ci(std::span<const double> x) {
  MeanCI m;
  m.n = static_cast<int64_t>(x.size());
  if (x.empty()) return m;
  m.mean = mean_of(x);
  if (is_binary(x)) {
    m.method = "wilson";
    m.ci = wilson(static_cast<int64_t>(std::count(x.begin(), x.end(), 1.0)), m.n);
    return m;
  }
  m.method = "t";
  if (m.n < 2) return m;
  const double half = student_t_quantile(0.975, static_cast<double>(m.n - 1)) * sd_of(x, m.mean) / std::sqrt(static_cast<double>(m.n));
  m.ci = {m.mean - half, m.mean + half};
  return m;
}

Paired paired_newcombe(std::span<const double> x, std::span<const double> y) {
  if (!is_binary(x) || !is_binary(y)) return paired_bootstrap(x, y);
  Paired p;
  p.method = "newcombe";
  (void)differences(x, y, &p);
  if (p.n == 0) return p;
  // The paired 2x2 table: a both 1, b x only, c y only, d neither.
  int64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const bool xi = x[i] == 1.0, yi = y[i] == 1.0;
    (xi && yi ? a : xi ? b : yi ? c : d) += 1;
  }
  const int64_t n = p.n;
  const double nn = static_cast<double>(n);
  const double p1 = static_cast<double>(a + b) / nn, p2 = static_cast<double>(a + c) / nn;
  const Interval w1 = wilson(a + b, n), w2 = wilson(a + c, n);
  // The correlation of the two proportions, with Newcombe's continuity correction.
  double phi = 0;
  const double margins = static_cast<double>(a + b) * static_cast<double>(c + d) * static_cast<double>(a + c) * static_cast<double>(b + d);
  if (margins > 0) {
    const double cross = static_cast<double>(a) * static_cast<double>(d) - static_cast<double>(b) * static_cast<double>(c);
    if (cross > nn / 2) phi = (cross - nn / 2) / std::sqrt(margins);
    else if (cross < 0) phi = cross / std::sqrt(margins);
  }
  const double dl1 = p1 - w1.lo, du1 = w1.hi - p1, dl2 = p2 - w2.lo, du2 = w2.hi - p2;
  p.ci.lo = p.diff - std::sqrt(std::max(0.0, dl1 * dl1 + du2 * du2 - 2 * phi * dl1 * du2));
  p.ci.hi = p.diff + std::sqrt(std::max(0.0, dl2 * dl2 + du1 * du1 - 2 * phi * dl2 * du1));
  p.p = sign_test_p(b, b + c);
  return p;
}

Paired paired_bootstrap(std::span<const double> x, std::span<const double> y, int draws, uint64_t seed) {
  if (draws < 100) fail("paired_bootstrap: {} draws", draws);
  Paired p;
  p.method = "bootstrap";
  const std::vector<double> d = differences(x, y, &p);
  if (d.empty()) return p;
  p.p = sign_test_p(p.higher, p.higher + p.lower);
  Rng rng(seed);
  std::vector<double> means(static_cast<size_t>(draws));
  for (double& m : means) {
    double s = 0;
    for (size_t i = 0; i < d.size(); ++i) s += d[rng.below(d.size())];
    m = s / static_cast<double>(d.size());
  }
  std::sort(means.begin(), means.end());
  // The 2.5% and 97.5% points (nearest rank).
  const auto at = [&](double q) { return means[std::min(means.size() - 1, static_cast<size_t>(q * static_cast<double>(draws)))]; };
  p.ci = {at(0.025), at(0.975)};
  return p;
}

Paired paired_t(std::span<const double> x, std::span<const double> y) {
  Paired p;
  p.method = "t";
  const std::vector<double> d = differences(x, y, &p);
  if (p.n < 2) return p;
  const double sd = sd_of(d, p.diff), se = sd / std::sqrt(static_cast<double>(p.n)), df = static_cast<double>(p.n - 1);
  if (se == 0) {
    p.ci = {p.diff, p.diff};
    p.p = p.diff == 0 ? 1.0 : 0.0;
    return p;
  }
  const double half = student_t_quantile(0.975, df) * se;
  p.ci = {p.diff - half, p.diff + half};
  p.p = 2 * student_t_cdf(-std::fabs(p.diff / se), df);
  return p;
}

Paired paired_compare(std::span<const double> x, std::span<const double> y, bool proportion_metric) {
  return proportion_metric ? paired_newcombe(x, y) : paired_t(x, y);
}

Verdict judge(double reference_mean, const Interval& diff_ci, bool higher_is_better, double tolerance) {
  if (std::isnan(diff_ci.lo) || std::isnan(diff_ci.hi) || std::isnan(reference_mean)) return Verdict::Unresolved;
  const double limit = tolerance * std::fabs(reference_mean);
  // The loss (positive: worse than the reference) at either end of the interval.
  const double loss_best = higher_is_better ? -diff_ci.hi : diff_ci.lo;
  const double loss_worst = higher_is_better ? -diff_ci.lo : diff_ci.hi;
  if (loss_worst <= limit + 1e-12) return Verdict::Within;
  if (loss_best > limit + 1e-12) return Verdict::Outside;
  return Verdict::Unresolved;
}

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::Within: return "within";
    case Verdict::Outside: return "outside";
    case Verdict::Unresolved: return "unresolved";
  }
  return "?";
}

}  // namespace dashlm::eval::stats
