#include "runtime/dash/prefill.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>

#include "common/error.h"
#include "common/finite.h"
#include "common/timing.h"

namespace dashlm {

void HaltingTrace::reset(int64_t n, int layers) {
  n_tokens = n;
  n_layer = layers;
  halted_after.assign(static_cast<size_t>(n), layers);
  active_per_layer.assign(static_cast<size_t>(layers), 0);
  delta.assign(static_cast<size_t>(n * layers), std::numeric_limits<float>::quiet_NaN());
  flops_full = flops_done = 0;
  decision_layers.clear();
}

void TokenSets::reset(int64_t n_tokens) {
  active.resize(static_cast<size_t>(n_tokens));
  std::iota(active.begin(), active.end(), 0);
  halted.clear();
  pos_active.clear();
  pos_halted.clear();
}

void TokenSets::halt(const std::vector<int32_t>& newly, std::span<const int32_t> pos) {
  if (newly.empty()) return;
  const auto n = static_cast<int32_t>(pos.size());
  std::vector<int32_t> rest, merged;
  std::set_difference(active.begin(), active.end(), newly.begin(), newly.end(), std::back_inserter(rest));
  if (rest.size() + newly.size() != active.size()) fail("halting policy returned tokens that are not active");
  if (rest.empty() || rest.back() != n - 1) fail("halting policy halted the last token");
  active.swap(rest);
  std::merge(halted.begin(), halted.end(), newly.begin(), newly.end(), std::back_inserter(merged));
  halted.swap(merged);
  pos_active.resize(active.size());
  for (size_t i = 0; i < active.size(); ++i) pos_active[i] = pos[static_cast<size_t>(active[i])];
  pos_halted.resize(halted.size());
  for (size_t i = 0; i < halted.size(); ++i) pos_halted[i] = pos[static_cast<size_t>(halted[i])];
}

void check_context_size(int64_t n_ctx) {
  if (n_ctx <= 0 || n_ctx > std::numeric_limits<int32_t>::max()) {
    fail("a context of {} tokens is out of range (1..{})", n_ctx, std::numeric_limits<int32_t>::max());
  }
}

void check_tokens(std::span<const int32_t> tokens, int64_t n_past, int64_t n_ctx, int64_t n_vocab) {
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) fail("nothing to process: no tokens");
  if (n_past + n > n_ctx) fail("{} tokens do not fit the context: {} already used of {}", n, n_past, n_ctx);
  for (int32_t t : tokens)
    if (t < 0 || t >= n_vocab) fail("token id {} is outside the vocabulary (0..{})", t, n_vocab - 1);
}

double layer_flops(const HParams& hp, int64_t n_q, double keys, int64_t n_kv_only) {
  const double d = static_cast<double>(hp.n_embd), qd = static_cast<double>(hp.q_dim()),
               kvd = static_cast<double>(hp.kv_dim()), ff = static_cast<double>(hp.n_ff);
  const double gemm = 2.0 * static_cast<double>(n_q) * (d * qd + 2 * d * kvd + qd * d + 3 * d * ff);
  const double attn = 4.0 * hp.head_dim * hp.n_head * keys;  // Q K^T and P V
  return gemm + attn + 2.0 * static_cast<double>(n_kv_only) * 2 * d * kvd;
}

double visible_keys(const int32_t* pos, int64_t n, int window, const uint8_t* valid, std::vector<int64_t>& prefix) {
  double keys = 0;
  if (!valid) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t lo = window > 0 ? std::max<int64_t>(0, pos[i] - window + 1) : 0;
      keys += static_cast<double>(pos[i] - lo + 1);
    }
    return keys;
  }
  const int64_t n_kv = pos[n - 1] + 1;
  prefix.assign(static_cast<size_t>(n_kv + 1), 0);
  for (int64_t j = 0; j < n_kv; ++j) prefix[static_cast<size_t>(j + 1)] = prefix[static_cast<size_t>(j)] + valid[j];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t lo = window > 0 ? std::max<int64_t>(0, pos[i] - window + 1) : 0;
    keys += static_cast<double>(prefix[static_cast<size_t>(pos[i] + 1)] - prefix[static_cast<size_t>(lo)]);
  }
  return keys;
}

namespace {

// After non-finite logits: the segment again with every row through every layer, its hidden
// states checked after the embedding and after each layer, to name where they stopped being
// finite. Costs nothing unless the logits were broken (the prefill checks only the logits).
[[noreturn]] void report_non_finite(LayerExecutor& ex, const HParams& hp, std::span<const int32_t> tokens,
                                    std::span<const int32_t> pos) {
  const auto n = static_cast<int64_t>(tokens.size());
  std::vector<float> h(static_cast<size_t>(n * hp.n_embd));
  TokenSets sets;
  sets.reset(n);
  ex.begin_segment(tokens, pos, false);
  ex.rows_changed(sets);
  ex.read_hidden(h.data());
  const char* what = "the logits are not finite (NaN or Inf)";
  if (!all_finite(h)) fail("{}: the token embeddings already are (tensor token_embd.weight)", what);
  LayerRun r;
  r.all = true;
  r.n = n;
  r.rows = sets.active.data();
  r.pos = pos.data();
  for (int il = 0; il < hp.n_layer; ++il) {
    r.layer = il;
    ex.run_layer(r);
    ex.read_hidden(h.data());
    if (!all_finite(h)) {
      fail("{}: the hidden state stopped being finite at layer {} (of layers 0..{}): tensors blk.{}.* or the model's hyperparameters are broken",
           what, il, hp.n_layer - 1, il);
    }
  }
  fail("{}, but the hidden states stay finite through every layer: the output norm or projection (output_norm.weight, output.weight) is broken",
       what);
}

// The segment through every layer, layer by layer (see prefill_segment).
// Without `logits` (a piece that is not the last) it returns no logits.
std::vector<float> run_segment(LayerExecutor& ex, const HParams& hp, std::span<const int32_t> tokens, int64_t n_past,
                               int64_t n_ctx, const PrefillOptions& opt, ForwardStats* stats, bool logits = true) {
  const int L = hp.n_layer;
  const int64_t d = hp.n_embd;
  const auto n = static_cast<int64_t>(tokens.size());
  check_tokens(tokens, n_past, n_ctx, hp.n_vocab);
  const auto t0 = Clock::now();

  const HaltingConfig* hc = opt.halting && opt.halting->enabled() ? opt.halting : nullptr;
  std::unique_ptr<HaltingPolicy> policy = hc ? make_halting_policy(*hc, L) : nullptr;
  const DeltaSignal signal = hc ? hc->signal : opt.trace_signal;
  std::vector<int32_t> pos(static_cast<size_t>(n));
  std::iota(pos.begin(), pos.end(), static_cast<int32_t>(n_past));
  ex.begin_segment(tokens, pos, signal == DeltaSignal::Block);
  const size_t nd = static_cast<size_t>(n * d);
  if (opt.hidden_per_layer) {
    opt.hidden_per_layer->resize(static_cast<size_t>(L + 1) * nd);
    ex.read_hidden(opt.hidden_per_layer->data());
  }

  if (opt.query_rows < 0 || (opt.query_rows > 0 && opt.query_rows >= n)) {
    fail("a query of {} rows in a segment of {} tokens leaves no document", opt.query_rows, n);
  }
  std::vector<uint8_t> eligible = hc ? halting_eligibility(*hc, n) : std::vector<uint8_t>{};
  if (hc) std::fill(eligible.end() - opt.query_rows, eligible.end(), uint8_t{0});
  if (!opt.word_starts.empty() && static_cast<int64_t>(opt.word_starts.size()) != n) {
    fail("word starts for {} tokens in a segment of {}", opt.word_starts.size(), n);
  }
  if (policy) {
    policy->set_query_rows(opt.query_rows);
    policy->set_word_starts(opt.word_starts);
    std::vector<int> windows(static_cast<size_t>(L));
    for (int il = 0; il < L; ++il) windows[static_cast<size_t>(il)] = hp.layer_window(il);
    policy->set_layer_windows(std::move(windows));
    policy->begin(n, eligible);
  }
  HaltingTrace* tr = opt.trace;
  if (tr) tr->reset(n, L);
  std::vector<float> delta(policy || tr ? static_cast<size_t>(n) : 0);
  // topk may decide where the signals are (on the GPU), when the executor can rank that signal.
  const std::optional<HaltingPolicy::TopK> topk = policy && ex.ranks_on_device(signal) ? policy->topk_rule() : std::nullopt;
  std::vector<float> recv_slots, recv_tokens;  // attention received, per cache slot and per token

  TokenSets sets;
  sets.reset(n);
  const std::vector<int32_t>& active = sets.active;
  std::vector<int32_t> newly;
  std::vector<int64_t> prefix;
  if (stats) stats->layer_ms.assign(static_cast<size_t>(L), 0.0);

  for (int il = 0; il < L; ++il) {
    const auto tl = Clock::now();
    const auto na = static_cast<int64_t>(active.size());
    const bool all = na == n;
    // The policy's "last N rows" is at most the segment (a larger --attn-queries means all rows).
    const int attn_rows = policy ? static_cast<int>(std::min<int64_t>(policy->attention_rows(il), n)) : 0;
    if (attn_rows > 0) recv_slots.assign(static_cast<size_t>(n_ctx), 0.f);
    const bool device_topk = topk && topk->layer == il && il + 1 < L;

    LayerRun r;
    r.layer = il;
    r.all = all;
    r.n = na;
    r.rows = active.data();
    r.pos = all ? pos.data() : sets.pos_active.data();
    const bool trace_delta = tr != nullptr && opt.trace_deltas;
    r.signal = signal_wanted(policy.get(), trace_delta, il, L);
    r.kind = signal;
    r.signal_out = r.signal && (trace_delta || !device_topk) ? delta.data() : nullptr;
    r.attention_rows = attn_rows;
    r.attention_out = attn_rows > 0 ? recv_slots.data() : nullptr;
    if (!all && !sets.halted.empty()) {
      // Halted tokens: keys and values from their frozen states (retain), or none (drop).
      if (hc->kv == KVMode::Retain) {
        ex.project_kv(il, sets.halted, sets.pos_halted);
      } else {
        ex.drop_slots(il, sets.pos_halted);
      }
    }
    ex.run_layer(r);

    if (tr) {
      const int window = hp.layer_window(il);
      tr->active_per_layer[static_cast<size_t>(il)] = na;
      tr->flops_full += layer_flops(hp, n, visible_keys(pos.data(), n, window, nullptr, prefix), 0);
      const int64_t n_kv_only = hc && hc->kv == KVMode::Retain ? n - na : 0;
      tr->flops_done += layer_flops(hp, na, visible_keys(r.pos, na, window, ex.valid_slots(il), prefix), n_kv_only);
      if (trace_delta)
        for (int64_t i = 0; i < na; ++i) tr->delta[static_cast<size_t>(active[static_cast<size_t>(i)] * L + il)] = delta[static_cast<size_t>(i)];
    }
    if (opt.hidden_per_layer) ex.read_hidden(opt.hidden_per_layer->data() + static_cast<size_t>(il + 1) * nd);

    if (policy && il + 1 < L) {
      if (attn_rows > 0) {
        recv_tokens.resize(static_cast<size_t>(n));
        for (int64_t t = 0; t < n; ++t) recv_tokens[static_cast<size_t>(t)] = recv_slots[static_cast<size_t>(pos[static_cast<size_t>(t)])];
      }
      if (device_topk) {
        newly = ex.rank_topk(active, eligible, topk->keep);
      } else {
        LayerSignals s;
        s.active = active;
        s.signal = std::span<const float>(delta.data(), r.signal ? static_cast<size_t>(na) : 0);
        s.attention_received = recv_tokens;
        newly = policy->observe(il, s);
      }
      if (!newly.empty()) {
        sets.halt(newly, pos);
        if (tr)
          for (int32_t t : newly) tr->halted_after[static_cast<size_t>(t)] = il;
        ex.rows_changed(sets);
      }
    }
    if (stats) {
      ex.synchronize();
      stats->layer_ms[static_cast<size_t>(il)] = ms_since(tl);
    }
    if (opt.progress) opt.progress(il + 1, L);
  }

  if (tr && policy) {
    const std::vector<int> d = policy->decision_layers();
    tr->decision_layers.assign(d.begin(), d.end());
  }

  const auto tlog = Clock::now();
  if (!logits) {
    if (stats) {
      ex.synchronize();
      stats->logits_ms = 0;
      stats->n_tokens = n;
      stats->total_ms = ms_since(t0);
    }
    return {};
  }
  std::vector<float> last(static_cast<size_t>(hp.n_vocab));
  if (opt.logits_all) {
    const int64_t first = std::clamp<int64_t>(opt.logits_first, 0, n - 1);
    opt.logits_all->resize(static_cast<size_t>((n - first) * hp.n_vocab));
    ex.output_logits(first, n - first, opt.logits_all->data());
    std::copy_n(opt.logits_all->data() + (n - 1 - first) * hp.n_vocab, hp.n_vocab, last.data());
  } else {
    ex.output_logits(n - 1, 1, last.data());
  }
  ex.synchronize();
  // NaN or Inf weights (or hyperparameters) must not pass for an answer.
  if (!all_finite(last) || (opt.logits_all && !all_finite(*opt.logits_all))) {
    report_non_finite(ex, hp, tokens, pos);
  }
  if (stats) {
    stats->logits_ms = ms_since(tlog);
    stats->n_tokens = n;
    stats->total_ms = ms_since(t0);
  }
  return last;
}

}  // namespace

std::vector<float> prefill_segment(LayerExecutor& ex, const HParams& hp, std::span<const int32_t> tokens, int64_t n_past,
                                   int64_t n_ctx, const PrefillOptions& opt, ForwardStats* stats) {
  // A full prefill that nothing reads whole (no halting, trace, per-layer hidden states or
  // logits of every row) runs in pieces of at most the executor's segment_rows() tokens, one
  // after the other, each a segment after the cache that the pieces before it filled. Row for
  // row it is the same arithmetic: the pieces split the segment where the executor's own row
  // chunks would (equal parts), and a row sees the same keys. Only the hidden states of one
  // piece exist at a time instead of the whole prompt's.
  const auto n = static_cast<int64_t>(tokens.size());
  const int64_t piece = ex.segment_rows();
  const bool halting = opt.halting && opt.halting->enabled();
  if (piece <= 0 || n <= piece || halting || opt.trace || opt.hidden_per_layer || opt.logits_all || opt.query_rows > 0) {
    return run_segment(ex, hp, tokens, n_past, n_ctx, opt, stats);
  }
  check_tokens(tokens, n_past, n_ctx, hp.n_vocab);
  const auto t0 = Clock::now();
  const Chunks pieces = chunks_of(n, piece);
  const int64_t count = pieces.count;
  const int L = hp.n_layer;
  PrefillOptions po;
  po.trace_signal = opt.trace_signal;
  ForwardStats part;
  if (stats) stats->layer_ms.assign(static_cast<size_t>(L), 0.0);
  std::vector<float> last;
  for (int64_t c = 0; c < count; ++c) {
    const int64_t i0 = pieces.begin(c), i1 = pieces.begin(c + 1);
    if (opt.progress) po.progress = [&opt, c, L, count](int done, int) { opt.progress(static_cast<int>(c * L + done), static_cast<int>(count * L)); };
    if (!opt.word_starts.empty()) po.word_starts.assign(opt.word_starts.begin() + i0, opt.word_starts.begin() + i1);
    last = run_segment(ex, hp, tokens.subspan(static_cast<size_t>(i0), static_cast<size_t>(i1 - i0)), n_past + i0, n_ctx, po,
                       stats ? &part : nullptr, c + 1 == count);
    if (stats) {
      for (int il = 0; il < L; ++il) stats->layer_ms[static_cast<size_t>(il)] += part.layer_ms[static_cast<size_t>(il)];
      stats->logits_ms = part.logits_ms;
    }
  }
  if (stats) {
    stats->n_tokens = n;
    stats->total_ms = ms_since(t0);
  }
  return last;
}

}  // namespace dashlm
