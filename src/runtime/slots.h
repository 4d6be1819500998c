// Sequences served side by side (the server's slots). Each slot is an engine with a KV cache of
// its own over the model's shared weights, and remembers the tokens its cache holds, so that a
// prompt starting with what a slot holds prefills only the tokens after the common prefix.
//
// Every forward pass of every slot runs on one compute thread, first asked first served: the
// cores (or the GPU) run one pass at a time with all their threads, and slots that are decoding
// take turns token by token. Greedy answers therefore do not depend on how many requests run at
// once.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "model/model.h"
#include "runtime/engine_factory.h"
#include "runtime/engine_iface.h"

namespace dashlm {

// One thread on which the queued functions run in order.
class ComputeThread {
 public:
  ComputeThread();
  ~ComputeThread();  // runs what is queued, then joins
  ComputeThread(const ComputeThread&) = delete;
  ComputeThread& operator=(const ComputeThread&) = delete;
  // Runs f on the compute thread and waits for it; rethrows what f threw.
  void run(const std::function<void()>& f);

 private:
  struct Job;
  void loop();
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
  bool stop_ = false;
  std::thread thread_;
};

// A slot: an engine whose calls run on the compute thread, and what its cache holds.
class Slot final : public InferenceEngine {
 public:
  Slot(int id, std::unique_ptr<InferenceEngine> engine, ComputeThread& compute)
      : id_(id), engine_(std::move(engine)), compute_(compute) {}
  int id() const { return id_; }

  // The longest common prefix of the cache's tokens and `prompt`.
  int64_t common_prefix(std::span<const int32_t> prompt) const;
  // Keeps the part of the cache this prompt can reuse, at most prompt.size() - 1 tokens (the
  // last prompt token must run to give the next token's logits), and forgets the rest. Returns
  // the number of tokens kept: the prompt's tokens from there on are to be prefilled.
  int64_t reuse(std::span<const int32_t> prompt);
  // After a request: the cache holds these tokens (the prompt, then the generated tokens that
  // were decoded), cut to what the engine holds.
  void set_cached(std::vector<int32_t> tokens);
  const std::vector<int32_t>& cached() const { return tokens_; }

  // InferenceEngine, each call on the compute thread.
  std::vector<float> prefill(std::span<const int32_t> tokens, const PrefillOptions& opt, ForwardStats* stats) override;
  std::vector<float> decode(int32_t token) override;
  int64_t n_past() const override { return engine_->n_past(); }
  int64_t n_ctx() const override { return engine_->n_ctx(); }
  void reset() override;
  void truncate(int64_t n) override;
  std::string kernels() const override { return engine_->kernels(); }

 private:
  int id_;
  std::unique_ptr<InferenceEngine> engine_;
  ComputeThread& compute_;
  std::vector<int32_t> tokens_;  // what the cache holds, position by position
};

// Thrown by SlotPool::acquire when every slot is busy and the queue is full.
class QueueFull : public Error {
 public:
  using Error::Error;
};

// The slots and the bounded queue of requests waiting for one.
class SlotPool {
 public:
  // n_slots engines of n_ctx tokens each on `backend`, created on the compute thread; at most
  // max_waiting requests wait for a slot.
  SlotPool(const Model& model, int n_slots, int64_t n_ctx, const std::string& backend, int max_waiting,
           CacheType kv = CacheType::Default);
  ~SlotPool();

  // A free slot for this prompt, waiting in line (first come, first served) while all are busy:
  // of the free slots, the one holding the longest common prefix with the prompt, else the one
  // used least recently. Throws QueueFull when max_waiting requests already wait, and Error when
  // the pool closes or `give_up` returns true while waiting (checked every 100 ms).
  Slot& acquire(std::span<const int32_t> prompt, const std::function<bool()>& give_up = {});
  void release(Slot& s);
  // Refuses new and waiting requests (shutdown).
  void close();

  int size() const { return static_cast<int>(slots_.size()); }
  int running() const;
  int waiting() const;
  int64_t n_ctx() const { return n_ctx_; }
  std::string kernels() const { return slots_.front()->kernels(); }

 private:
  ComputeThread compute_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<uint8_t> busy_;
  std::vector<uint64_t> last_used_;
  int64_t n_ctx_;
  int max_waiting_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<uint64_t> line_;  // tickets of the waiting requests, in arrival order
  uint64_t next_ticket_ = 0, clock_ = 0;
  bool closed_ = false;
};

}  // namespace dashlm
