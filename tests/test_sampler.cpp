#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "common/error.h"
#include "runtime/sampler.h"

using namespace dashlm;

TEST(Sampler, GreedyPicksFirstMaximum) {
  std::vector<float> l{0.1f, 3.f, -2.f, 3.f};
  Sampler s({0.f, 40, 0.95f, 1});
  EXPECT_EQ(s.sample(l), 1);
  EXPECT_EQ(argmax(l), 1);
}

TEST(Sampler, SameSeedSameSequence) {
  std::vector<float> l{1.f, 2.f, 3.f, 2.5f, 0.f, -1.f};
  Sampler a({1.f, 0, 1.f, 42}), b({1.f, 0, 1.f, 42});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.sample(l), b.sample(l));
}

TEST(Sampler, TopKOneIsGreedy) {
  std::vector<float> l{1.f, 2.f, 5.f, 2.5f};
  Sampler s({2.f, 1, 1.f, 7});
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(l), 2);
}

TEST(Sampler, TopPKeepsOnlyTheNucleus) {
  // p = softmax: token 0 holds ~0.98 of the mass, so top-p 0.9 keeps it alone.
  std::vector<float> l{10.f, 5.f, 4.f, 3.f};
  Sampler s({1.f, 0, 0.9f, 3});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(s.sample(l), 0);
}

TEST(Sampler, FrequenciesFollowTheDistribution) {
  // Two tokens with logits differing by ln(3): probabilities 0.75 and 0.25.
  std::vector<float> l{1.0986123f, 0.f};
  Sampler s({1.f, 0, 1.f, 123});
  int n0 = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) n0 += s.sample(l) == 0;
  EXPECT_NEAR(static_cast<double>(n0) / n, 0.75, 0.02);
}

TEST(Sampler, RejectsBadTopP) {
  EXPECT_THROW(Sampler({1.f, 0, 0.f, 1}), Error);
  EXPECT_THROW(Sampler({1.f, 0, 1.5f, 1}), Error);
}
