// The server's pieces that need no HTTP: request parsing, stop strings, conversations in a
// model's format, and the slots' prefix reuse (a reused cache gives the logits a fresh one gives).
#include <gtest/gtest.h>

#include <cmath>

#include "frontends/server/api.h"
#include "model/chat.h"
#include "runtime/dash/prefill.h"
#include "runtime/engine.h"
#include "runtime/slots.h"
#include "stories.h"

namespace dashlm {
namespace {

using server::Endpoint;
using server::parse_generation_request;

int status_of(Endpoint e, const std::string& body) {
  try {
    parse_generation_request(e, body);
  } catch (const server::ApiError& err) {
    return err.status;
  }
  return 200;
}

TEST(ServerApi, ParsesChatRequest) {
  const auto r = parse_generation_request(Endpoint::Chat, R"({"model": "m", "messages": [{"role": "system", "content": "be brief"},
      {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
      "max_completion_tokens": 7, "temperature": 0, "top_p": 0.5, "seed": -1, "stop": "END", "stream": true,
      "stream_options": {"include_usage": true}, "dash": {"policy": "topk", "keep": 0.25, "kv": "drop"}})");
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1].content, "hi there");
  EXPECT_EQ(r.max_tokens.value(), 7);
  EXPECT_EQ(r.sampling.temperature, 0.f);
  EXPECT_EQ(r.sampling.top_p, 0.5f);
  EXPECT_EQ(r.sampling.seed, ~uint64_t{0});
  EXPECT_TRUE(r.seeded && r.stream && r.include_usage);
  ASSERT_EQ(r.stop.size(), 1u);
  EXPECT_EQ(r.dash.settings.size(), 3u);
  const HaltingConfig hc = server::resolve_dash(r.dash, HaltingConfig{}, 12, 0, "");
  EXPECT_EQ(hc.policy, "topk");
  EXPECT_EQ(hc.kv, KVMode::Drop);
  EXPECT_DOUBLE_EQ(hc.keep, 0.25);
}

TEST(ServerApi, RefusesBadRequests) {
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  for (const std::string& body : std::vector<std::string>{"", "{", "[]", "null", "{}", R"({"messages": 3})", R"({"messages": []})",
                                 R"({"messages": [{"role": "user"}]})", R"({"messages": [{"role": "assistant", "content": "x"}]})",
                                 "{" + msgs + R"(, "n": 3})", "{" + msgs + R"(, "max_tokens": 0})", "{" + msgs + R"(, "max_tokens": 1.5})",
                                 "{" + msgs + R"(, "temperature": "hot"})", "{" + msgs + R"(, "top_p": 0})", "{" + msgs + R"(, "stop": [1]})",
                                 "{" + msgs + R"(, "stop": ["a", "b", "c", "d", "e"]})", "{" + msgs + R"(, "logprobs": true})",
                                 "{" + msgs + R"(, "dash": 5})", "{" + msgs + R"(, "dash": {"speed": 2}})", "{" + msgs + R"(, "dash": {"keep": [1]}})",
                                 "{" + msgs + R"(, "seed": 18446744073709551616})"}) {
    EXPECT_EQ(status_of(Endpoint::Chat, body), 400) << body;
  }
  EXPECT_EQ(status_of(Endpoint::Completion, R"({"prompt": ""})"), 400);
  EXPECT_EQ(status_of(Endpoint::Completion, R"({"prompt": [1, 2]})"), 400);
  EXPECT_EQ(status_of(Endpoint::Completion, R"({"prompt": "x", "echo": true})"), 400);
  EXPECT_EQ(status_of(Endpoint::Completion, R"({"prompt": ["x"]})"), 200);
  // Settings are checked by the halting config's own parser.
  const auto r = parse_generation_request(Endpoint::Completion, R"({"prompt": "x", "dash": {"policy": "topk", "keep": 3}})");
  EXPECT_THROW(server::resolve_dash(r.dash, HaltingConfig{}, 12, 0, ""), server::ApiError);
  const auto s = parse_generation_request(Endpoint::Completion, R"({"prompt": "x", "dash": "topk:0.4:0.2:drop"})");
  EXPECT_EQ(server::resolve_dash(s.dash, HaltingConfig{}, 12, 0, "").kv, KVMode::Drop);
}

TEST(ServerApi, StopStringsAcrossPieces) {
  server::StopMatcher m({"STOP", "xyz"});
  std::string out;
  for (const char* p : {"ab", "xy", "cS", "TO", "P", "def"}) out += m.push(p);
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "abxyc");
  server::StopMatcher n({"END"});
  std::string o2 = n.push("the E");
  o2 += n.push("N");
  EXPECT_EQ(o2, "the ");  // "EN" may begin END: held back
  o2 += n.flush();
  EXPECT_EQ(o2, "the EN");
  EXPECT_FALSE(n.stopped());
}

TEST(ChatConversation, SplitsAtTheLastUserMessage) {
  const std::vector<ChatMessage> m = {{"system", "S"}, {"user", "U1"}, {"assistant", "A1"}, {"user", "U2"}};
  const ChatText t = chat_format_conversation(ChatFormat::ChatML, m);
  EXPECT_EQ(t.history, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\n");
  EXPECT_EQ(t.last_turn, "U2<|im_end|>\n<|im_start|>assistant\n");
  const ChatText g = chat_format_conversation(ChatFormat::Gemma, m);
  EXPECT_EQ(g.history, "<start_of_turn>user\nS\n\nU1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n<start_of_turn>user\n");
  const ChatText b = chat_format_conversation(ChatFormat::None, m);
  EXPECT_EQ(b.history + b.last_turn, "S\n\nU1\n\nA1\n\nU2");
  // The first turn of a longer chat is a prefix of it: what makes prefix reuse work.
  const std::vector<ChatMessage> first = {{"system", "S"}, {"user", "U1"}};
  const ChatText f = chat_format_conversation(ChatFormat::ChatML, first);
  EXPECT_EQ((t.history + t.last_turn).rfind(f.history + "U1<|im_end|>\n<|im_start|>assistant\n", 0), 0u);
  EXPECT_THROW(chat_format_conversation(ChatFormat::ChatML, std::vector<ChatMessage>{{"assistant", "x"}}), Error);
  EXPECT_THROW(chat_format_conversation(ChatFormat::ChatML, std::vector<ChatMessage>{{"user", "x"}, {"assistant", "y"}}), Error);
}

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// A slot that reuses a prefix and prefills the rest gives the logits of a fresh prefill of the
// whole prompt, in both orders of requests, and after a drop-mode prefill keeps its holes.
TEST(Slots, PrefixReuseGivesTheLogitsOfAFreshPrefill) {
  const Model& model = test::stories();
  SlotPool pool(model, 2, 256, "cpu", 4);
  std::vector<int32_t> a, b;
  for (int i = 0; i < 60; ++i) a.push_back(1 + (i * 37) % 500);
  b = std::vector<int32_t>(a.begin(), a.begin() + 40);
  for (int i = 0; i < 25; ++i) b.push_back(2 + (i * 11) % 500);

  Engine fresh(model, 256, kDefaultKvType);  // the pool's engines have the default cache type
  const std::vector<float> want = fresh.prefill(b);

  Slot& s = pool.acquire(a);
  s.prefill(a, PrefillOptions{}, nullptr);
  s.set_cached(a);
  EXPECT_EQ(s.reuse(b), 40);
  const std::vector<float> got = s.prefill(std::span<const int32_t>(b).subspan(40), PrefillOptions{}, nullptr);
  EXPECT_LT(max_diff(got, want), 1e-4f);
  s.set_cached(b);
  pool.release(s);
  // The same prompt again reuses all but its last token.
  Slot& s2 = pool.acquire(b);
  EXPECT_EQ(&s2, &s);  // chosen by prefix
  EXPECT_EQ(s2.reuse(b), static_cast<int64_t>(b.size()) - 1);
  EXPECT_LT(max_diff(s2.prefill(std::span<const int32_t>(b).subspan(b.size() - 1), PrefillOptions{}, nullptr), want), 1e-4f);
  pool.release(s2);

  // Drop mode: the holes of the kept prefix stay, those after it go.
  Engine e(model, 256);
  HaltingConfig hc = HaltingConfig::parse("topk:2:0.25:drop");
  PrefillOptions po;
  po.halting = &hc;
  e.prefill(a, po);
  int holes_before = 0, holes_after = 0;
  const uint8_t* v = e.cache().valid_mask(4);
  ASSERT_NE(v, nullptr);
  for (int p = 0; p < 40; ++p) holes_before += v[p] == 0;
  e.truncate(40);
  v = e.cache().valid_mask(4);
  ASSERT_NE(v, nullptr);
  for (int p = 0; p < 40; ++p) holes_after += v[p] == 0;
  for (int p = 40; p < 256; ++p) EXPECT_EQ(v[p], 1) << p;
  EXPECT_GT(holes_before, 0);
  EXPECT_EQ(holes_after, holes_before);
  EXPECT_EQ(e.n_past(), 40);
}

TEST(Slots, QueueFullAndClose) {
  const Model& model = test::stories();
  SlotPool pool(model, 1, 64, "cpu", 0);
  const std::vector<int32_t> p = {1, 2, 3};
  Slot& s = pool.acquire(p);
  EXPECT_THROW(pool.acquire(p), QueueFull);
  pool.release(s);
  pool.close();
  EXPECT_THROW(pool.acquire(p), Error);
}

}  // namespace
}  // namespace dashlm
