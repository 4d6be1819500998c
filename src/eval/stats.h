// The statistics of an evaluation: 95% confidence intervals of task scores (Wilson for
// proportions, Student's t for means) and paired comparisons of a halting configuration against
// full prefill on the same samples (McNemar's exact test and Newcombe's score interval for 0/1
// scores, a paired bootstrap for other scores, a paired t interval for continuous metrics), and
// the verdict whether a configuration stays within a tolerance of full prefill, falls outside it,
// or cannot be told apart at the sample count. Written out here (they are small) so that the
// numbers do not depend on a statistics library; tests/test_stats.cpp checks them against
// published values.
#pragma once
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

namespace dashlm::eval::stats {

struct Interval {
  double lo = NAN, hi = NAN;
};

// The two-sided 95% quantile of the standard normal, 1.959964.
inline constexpr double kZ95 = 1.959963984540054;

// Wilson's score interval of a proportion, `successes` of n (n > 0), at z (95%: kZ95).
Interval wilson(int64_t successes, int64_t n, double z = kZ95);

// Student's t distribution with df degrees of freedom (df > 0): its CDF and its quantile.
double student_t_cdf(double t, double df);
double student_t_quantile(double p, double df);

// Two-sided exact binomial test of k successes in n trials with p = 1/2 (the sign test; McNemar's
// exact test on the discordant pairs). 1 when n = 0.
double sign_test_p(int64_t k, int64_t n);

// True when every value is 0 or 1.
bool is_binary(std::span<const double> x);

// The mean of the values with its 95% interval: Wilson's when every value is 0 or 1 ("wilson"),
// Student's t otherwise ("t"; no interval for fewer than 2 values).
struct MeanCI {
  int64_t n = 0;
  double mean = NAN;
  Interval ci;
  const char* method = "";  // a string literal
};
MeanCI mean_ci(std::span<const double> x);

// A configuration's values x against the reference's y on the same samples (x[i] and y[i] of
// sample i): the mean paired difference x - y with its 95% interval, on how many samples x is
// higher or lower, and the two-sided p of no difference.
//   "newcombe": every value 0 or 1; Newcombe's square-and-add score interval for paired
//               proportions (his method 10), p from McNemar's exact test
//   "bootstrap": other scores; the percentile interval of `draws` resamples of the samples
//               (deterministic: a fixed seed), p from the sign test
//   "t": continuous metrics; the paired t interval and t-test
// A method that does not fit the data falls back: newcombe to bootstrap when the values are not
// 0/1. With every difference 0, the bootstrap and t intervals are [0, 0] (no spread to measure);
// Newcombe's is not, which is why 0/1 scores use it.
struct Paired {
  int64_t n = 0, higher = 0, lower = 0;
  double diff = NAN, p = NAN;
  Interval ci;
  const char* method = "";  // a string literal
};
Paired paired_newcombe(std::span<const double> x, std::span<const double> y);
Paired paired_bootstrap(std::span<const double> x, std::span<const double> y, int draws = 10000, uint64_t seed = 1);
Paired paired_t(std::span<const double> x, std::span<const double> y);
// The method suited to a metric: "score" and the other 0/1 metrics newcombe (bootstrap when not
// 0/1), continuous metrics t.
Paired paired_compare(std::span<const double> x, std::span<const double> y, bool proportion_metric);

// Whether the paired difference stays within a tolerance of the reference: the tolerated loss is
// tolerance x |reference mean| (relative, as scripts/eval-summary judges), a loss being a fall of a
// score or a rise of a cost (higher_is_better false).
//   "within":     the whole interval lies within the tolerated loss (shown to keep the quality)
//   "outside":    the whole interval lies beyond it (shown to lose more)
//   "unresolved": the interval spans the limit: the samples cannot tell
enum class Verdict { Within, Outside, Unresolved };
Verdict judge(double reference_mean, const Interval& diff_ci, bool higher_is_better, double tolerance);
const char* verdict_name(Verdict v);

}  // namespace dashlm::eval::stats
