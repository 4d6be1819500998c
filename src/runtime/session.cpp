#include "runtime/session.h"

#include <algorithm>

#include "common/error.h"
#include "common/timing.h"
#include "runtime/dash/policy.h"

namespace dashlm {

std::vector<int32_t> Prompt::tokens() const {
  std::vector<int32_t> t = document;
  t.insert(t.end(), query.begin(), query.end());
  return t;
}

PrefillResult Session::prefill(const Prompt& p, const PrefillRequest& req) {
  const int64_t n = p.size();
  if (n == 0) fail("empty prompt: it has no tokens");
  if (req.logits_last < 1) fail("logits of at least the last prompt position are returned");
  const bool halting = req.halting && req.halting->enabled();
  const PolicyInfo* policy = halting ? find_halting_policy(req.halting->policy) : nullptr;
  PrefillResult r;
  const bool both = !p.document.empty() && !p.query.empty();
  r.joint = both && policy && policy->reads_query && req.query_visible;
  r.split = both && !r.joint && (halting || req.separate_query);
  // The first segment: the document alone (split), or the whole prompt (joined only when it has
  // both parts).
  const std::vector<int32_t> whole = both && !r.split ? p.tokens() : std::vector<int32_t>{};
  const std::span<const int32_t> first = both && !r.split ? std::span<const int32_t>(whole)
                                         : p.document.empty()   ? std::span<const int32_t>(p.query)
                                                                : std::span<const int32_t>(p.document);
  // Rows of the prompt whose logits are kept start at `from`; segment [a, a + len) computes its
  // own from max(0, from - a) when that is inside it.
  const int64_t from = n - std::min(req.logits_last, n);

  auto run_segment = [&](std::span<const int32_t> seg, int64_t a, const PrefillOptions& base, ForwardStats* st, double* ms) {
    PrefillOptions po = base;
    if (base.halting && policy && policy->reads(Setting::Sentences) && base.halting->sentences > 0) {
      po.word_starts = tok_.sentence_starts(seg);  // the policy groups whole sentences
    } else if (base.halting && policy && policy->reads(Setting::Words) && base.halting->words > 0) {
      po.word_starts = tok_.word_starts(seg);
    }
    std::vector<float> rows;
    const auto len = static_cast<int64_t>(seg.size());
    const bool keeps = from < a + len;
    if (keeps && !(from == a + len - 1)) {
      po.logits_all = &rows;
      po.logits_first = std::max<int64_t>(0, from - a);
    }
    const auto t0 = Clock::now();
    std::vector<float> last = engine_.prefill(seg, po, req.layer_times ? st : nullptr);
    *ms = ms_since(t0);
    if (keeps) {
      if (po.logits_all) {
        r.logits.insert(r.logits.end(), rows.begin(), rows.end());
      } else {
        r.logits.insert(r.logits.end(), last.begin(), last.end());
      }
    }
    return last;
  };

  PrefillOptions po;
  po.halting = req.halting;
  po.trace = req.trace;
  po.trace_signal = req.trace_signal;
  po.trace_deltas = req.trace_deltas;
  po.progress = req.progress;
  po.query_rows = r.joint ? static_cast<int64_t>(p.query.size()) : 0;
  std::vector<float> last = run_segment(first, 0, po, &r.stats, &r.document_ms);
  if (r.split) {
    r.document_last = std::move(last);
    ForwardStats qst;
    run_segment(p.query, static_cast<int64_t>(p.document.size()), PrefillOptions{}, &qst, &r.query_ms);
    r.stats.total_ms += qst.total_ms;
    r.stats.logits_ms += qst.logits_ms;
    r.stats.n_tokens += qst.n_tokens;
    for (size_t i = 0; i < r.stats.layer_ms.size() && i < qst.layer_ms.size(); ++i) r.stats.layer_ms[i] += qst.layer_ms[i];
  }
  return r;
}

Generation Session::generate(std::span<const float> logits, int32_t last_token, const GenerateOptions& opt) {
  Generation g;
  Sampler sampler(opt.sampling);
  TokenStream stream(tok_, last_token);
  std::vector<float> next;
  const auto t0 = Clock::now();
  for (int64_t i = 0; i < opt.max_tokens; ++i) {
    const int32_t id = sampler.sample(logits);
    if (!opt.ignore_eos && tok_.is_end_of_generation(id)) {
      g.stop_reason = "eos";
      break;
    }
    g.ids.push_back(id);
    const std::string piece = stream.push(id);
    g.text += piece;
    if (opt.on_text && !piece.empty() && !opt.on_text(piece)) {
      g.stop_reason = "stopped";
      break;
    }
    if (i + 1 < opt.max_tokens) {
      next = engine_.decode(id);
      logits = next;
      ++g.forward_passes;
    }
  }
  const std::string rest = stream.flush();
  g.text += rest;
  if (opt.on_text && !rest.empty()) opt.on_text(rest);
  g.ms = ms_since(t0);
  return g;
}

}  // namespace dashlm
