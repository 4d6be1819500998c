// The evaluation's statistics against published values: Wilson intervals (Newcombe 1998's table),
// Student's t quantiles (any t table), McNemar's exact test by hand, Newcombe's paired interval
// (the worked example of Fagerland, Lydersen and Laake, "Statistical Analysis of Contingency
// Tables", chapter 8: complete response before and after consolidation therapy), a paired t
// interval by hand, and the bootstrap's determinism and shape.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/error.h"
#include "eval/stats.h"

using namespace dashlm;
namespace st = dashlm::eval::stats;

TEST(EvalStats, Wilson) {
  // Newcombe (1998), table II: 0/10 -> 0 to 0.2775; and the docs' 8/8, 15/16, 2/8.
  st::Interval w = st::wilson(0, 10);
  EXPECT_EQ(w.lo, 0.0);
  EXPECT_NEAR(w.hi, 0.2775, 5e-5);
  w = st::wilson(8, 8);
  EXPECT_NEAR(w.lo, 0.675592, 1e-6);
  EXPECT_EQ(w.hi, 1.0);
  w = st::wilson(15, 16);
  EXPECT_NEAR(w.lo, 0.716713, 1e-6);
  EXPECT_NEAR(w.hi, 0.988881, 1e-6);
  w = st::wilson(2, 8);
  EXPECT_NEAR(w.lo, 0.071479, 1e-6);
  EXPECT_NEAR(w.hi, 0.590725, 1e-6);
  // At 50 samples a perfect score still leaves 7% below it: 2% cannot be resolved from one
  // configuration's score alone.
  EXPECT_NEAR(st::wilson(50, 50).lo, 0.928652, 1e-6);
  EXPECT_THROW(st::wilson(3, 2), Error);
  EXPECT_THROW(st::wilson(0, 0), Error);
}

TEST(EvalStats, StudentT) {
  // Two-sided 95% critical values from a t table.
  EXPECT_NEAR(st::student_t_quantile(0.975, 1), 12.7062, 1e-4);
  EXPECT_NEAR(st::student_t_quantile(0.975, 4), 2.776445, 1e-6);
  EXPECT_NEAR(st::student_t_quantile(0.975, 10), 2.228139, 1e-6);
  EXPECT_NEAR(st::student_t_quantile(0.975, 49), 2.009575, 1e-6);
  EXPECT_NEAR(st::student_t_quantile(0.975, 1e6), st::kZ95, 1e-5);
  EXPECT_NEAR(st::student_t_quantile(0.025, 10), -2.228139, 1e-6);
  EXPECT_EQ(st::student_t_cdf(0, 7), 0.5);
  // t = 2 with 3 degrees of freedom: 1 - 0.0697 (one tail).
  EXPECT_NEAR(st::student_t_cdf(2, 3), 0.930337, 1e-6);
  EXPECT_NEAR(st::student_t_cdf(-2, 3), 0.069663, 1e-6);
}

TEST(EvalStats, SignTest) {
  // McNemar's exact test: all 8 discordant pairs one way: 2 / 2^8.
  EXPECT_NEAR(st::sign_test_p(0, 8), 2.0 / 256, 1e-15);
  EXPECT_NEAR(st::sign_test_p(8, 8), 2.0 / 256, 1e-15);
  // 1 of 10: 2 (1 + 10) / 1024.
  EXPECT_NEAR(st::sign_test_p(1, 10), 22.0 / 1024, 1e-15);
  // 5 discordant pairs one way: 0.0625 (the docs' query against attn).
  EXPECT_NEAR(st::sign_test_p(0, 5), 0.0625, 1e-15);
  EXPECT_EQ(st::sign_test_p(0, 0), 1.0);
  EXPECT_EQ(st::sign_test_p(2, 4), 1.0);
  // Large n stays finite and symmetric.
  EXPECT_NEAR(st::sign_test_p(400, 1000), st::sign_test_p(600, 1000), 1e-12);
  EXPECT_LT(st::sign_test_p(400, 1000), 1e-9);
}

TEST(EvalStats, MeanIntervals) {
  const std::vector<double> bin = {1, 1, 0, 1, 1, 1, 1, 1};  // 7 of 8: Wilson
  st::MeanCI m = st::mean_ci(bin);
  EXPECT_STREQ(m.method, "wilson");
  EXPECT_EQ(m.n, 8);
  EXPECT_DOUBLE_EQ(m.mean, 0.875);
  EXPECT_NEAR(m.ci.lo, st::wilson(7, 8).lo, 1e-15);
  // 1, 2, 3, 4, 5: mean 3, sd 1.5811, t(4) 2.776445 -> 3 -+ 1.963243.
  const std::vector<double> v = {1, 2, 3, 4, 5};
  m = st::mean_ci(v);
  EXPECT_STREQ(m.method, "t");
  EXPECT_NEAR(m.ci.lo, 3 - 1.963243, 1e-6);
  EXPECT_NEAR(m.ci.hi, 3 + 1.963243, 1e-6);
  const std::vector<double> one = {2.5};
  m = st::mean_ci(one);
  EXPECT_TRUE(std::isnan(m.ci.lo));
}

TEST(EvalStats, PairedNewcombe) {
  // Fagerland et al., chapter 8: the paired table [[59, 6], [16, 80]] (both, first only, second
  // only, neither): difference -0.0621, Newcombe's square-and-add interval -0.1186 to -0.0046.
  std::vector<double> x, y;
  auto add = [&](int n, double a, double b) {
    for (int i = 0; i < n; ++i) {
      x.push_back(a);
      y.push_back(b);
    }
  };
  add(59, 1, 1);
  add(6, 1, 0);
  add(16, 0, 1);
  add(80, 0, 0);
  st::Paired p = st::paired_newcombe(x, y);
  EXPECT_STREQ(p.method, "newcombe");
  EXPECT_EQ(p.n, 161);
  EXPECT_EQ(p.higher, 6);
  EXPECT_EQ(p.lower, 16);
  EXPECT_NEAR(p.diff, -0.0621, 5e-5);
  EXPECT_NEAR(p.ci.lo, -0.1186, 5e-5);
  EXPECT_NEAR(p.ci.hi, -0.0046, 5e-5);
  EXPECT_NEAR(p.p, st::sign_test_p(6, 22), 1e-15);
  // No discordant pair among 50 perfect samples: the difference is 0 but its interval is not
  // [0, 0]; it is about -+0.07 (the Wilson interval of 50 of 50), so 2% is unresolved.
  x.assign(50, 1);
  y.assign(50, 1);
  p = st::paired_newcombe(x, y);
  EXPECT_EQ(p.diff, 0.0);
  EXPECT_NEAR(p.ci.lo, -(1 - st::wilson(50, 50).lo), 1e-12);
  EXPECT_NEAR(p.ci.hi, 1 - st::wilson(50, 50).lo, 1e-12);
  EXPECT_EQ(p.p, 1.0);
  EXPECT_EQ(st::judge(1.0, p.ci, true, 0.02), st::Verdict::Unresolved);
  // Not 0/1: the bootstrap instead.
  const std::vector<double> half = {0.5, 1, 1}, full = {1, 1, 1};
  EXPECT_STREQ(st::paired_newcombe(half, full).method, "bootstrap");
}

TEST(EvalStats, PairedT) {
  // Differences 1..5: mean 3, interval 3 -+ 1.963243, t = 4.2426 with 4 df: p = 0.013236.
  const std::vector<double> x = {2, 4, 6, 8, 10}, y = {1, 2, 3, 4, 5};
  const st::Paired p = st::paired_t(x, y);
  EXPECT_STREQ(p.method, "t");
  EXPECT_DOUBLE_EQ(p.diff, 3);
  EXPECT_NEAR(p.ci.lo, 3 - 1.963243, 1e-6);
  EXPECT_NEAR(p.ci.hi, 3 + 1.963243, 1e-6);
  EXPECT_NEAR(p.p, 0.013236, 1e-6);
  EXPECT_EQ(p.higher, 5);
  // Identical values: a difference of exactly 0 with no spread.
  const st::Paired same = st::paired_t(x, x);
  EXPECT_EQ(same.diff, 0.0);
  EXPECT_EQ(same.ci.lo, 0.0);
  EXPECT_EQ(same.ci.hi, 0.0);
  EXPECT_THROW(st::paired_t(x, std::vector<double>{1, 2}), Error);
}

TEST(EvalStats, PairedBootstrap) {
  std::vector<double> x(40), y(40);
  for (int i = 0; i < 40; ++i) {
    x[static_cast<size_t>(i)] = (i % 4 == 0) ? 0.5 : 1.0;  // 10 samples half right
    y[static_cast<size_t>(i)] = 1.0;
  }
  const st::Paired a = st::paired_bootstrap(x, y), b = st::paired_bootstrap(x, y);
  EXPECT_EQ(a.ci.lo, b.ci.lo);  // deterministic
  EXPECT_EQ(a.ci.hi, b.ci.hi);
  EXPECT_DOUBLE_EQ(a.diff, -0.125);
  EXPECT_EQ(a.lower, 10);
  EXPECT_LT(a.ci.lo, a.diff);
  EXPECT_LT(a.diff, a.ci.hi);
  // The normal approximation: sd of the differences 0.2193, se 0.0347: about -0.125 -+ 0.068.
  EXPECT_NEAR(a.ci.lo, -0.125 - 0.068, 0.012);
  EXPECT_NEAR(a.ci.hi, -0.125 + 0.068, 0.012);
  EXPECT_NEAR(a.p, st::sign_test_p(0, 10), 1e-15);
}

TEST(EvalStats, Verdict) {
  // Score 0.9 for full prefill: 2% tolerates a loss of 0.018.
  EXPECT_EQ(st::judge(0.9, {-0.01, 0.02}, true, 0.02), st::Verdict::Within);
  EXPECT_EQ(st::judge(0.9, {-0.05, 0.02}, true, 0.02), st::Verdict::Unresolved);
  EXPECT_EQ(st::judge(0.9, {-0.2, -0.05}, true, 0.02), st::Verdict::Outside);
  // NLL 3.0: a rise of up to 0.06 is tolerated.
  EXPECT_EQ(st::judge(3.0, {0.01, 0.05}, false, 0.02), st::Verdict::Within);
  EXPECT_EQ(st::judge(3.0, {0.07, 0.09}, false, 0.02), st::Verdict::Outside);
  EXPECT_EQ(st::judge(3.0, {NAN, NAN}, false, 0.02), st::Verdict::Unresolved);
  EXPECT_STREQ(st::verdict_name(st::Verdict::Unresolved), "unresolved");
}
