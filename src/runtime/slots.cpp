#include "runtime/slots.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include "runtime/engine_factory.h"

namespace dashlm {

struct ComputeThread::Job {
  const std::function<void()>* f = nullptr;
  std::exception_ptr error;
  bool done = false;
};

ComputeThread::ComputeThread() : thread_([this] { loop(); }) {}

ComputeThread::~ComputeThread() {
  {
    std::lock_guard lk(m_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void ComputeThread::run(const std::function<void()>& f) {
  Job job;
  job.f = &f;
  std::unique_lock lk(m_);
  queue_.push_back(&job);
  cv_.notify_all();
  cv_.wait(lk, [&] { return job.done; });
  if (job.error) std::rethrow_exception(job.error);
}

void ComputeThread::loop() {
  std::unique_lock lk(m_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stop_ and nothing left
    Job* job = queue_.front();
    queue_.pop_front();
    lk.unlock();
    try {
      (*job->f)();
    } catch (...) {
      job->error = std::current_exception();
    }
    lk.lock();
    job->done = true;
    cv_.notify_all();
  }
}

int64_t Slot::common_prefix(std::span<const int32_t> prompt) const {
  const auto n = std::min(tokens_.size(), prompt.size());
  size_t i = 0;
  while (i < n && tokens_[i] == prompt[i]) ++i;
  return static_cast<int64_t>(i);
}

int64_t Slot::reuse(std::span<const int32_t> prompt) {
  const int64_t keep = std::min<int64_t>(common_prefix(prompt), static_cast<int64_t>(prompt.size()) - 1);
  const int64_t n = std::max<int64_t>(0, keep);
  truncate(n);  // also cuts tokens_ to n
  return n;
}

void Slot::set_cached(std::vector<int32_t> tokens) {
  tokens_ = std::move(tokens);
  tokens_.resize(std::min(tokens_.size(), static_cast<size_t>(engine_->n_past())));
}

std::vector<float> Slot::prefill(std::span<const int32_t> tokens, const PrefillOptions& opt, ForwardStats* stats) {
  std::vector<float> out;
  compute_.run([&] { out = engine_->prefill(tokens, opt, stats); });
  return out;
}

std::vector<float> Slot::decode(int32_t token) {
  std::vector<float> out;
  compute_.run([&] { out = engine_->decode(token); });
  return out;
}

void Slot::reset() {
  compute_.run([&] { engine_->reset(); });
  tokens_.clear();
}

void Slot::truncate(int64_t n) {
  compute_.run([&] { engine_->truncate(n); });
  tokens_.resize(std::min(tokens_.size(), static_cast<size_t>(n)));
}

SlotPool::SlotPool(const Model& model, int n_slots, int64_t n_ctx, const std::string& backend, int max_waiting,
                   CacheType kv)
    : n_ctx_(n_ctx), max_waiting_(max_waiting) {
  if (n_slots < 1) fail("at least one slot is needed, got {}", n_slots);
  if (max_waiting < 0) fail("the queue length must be >= 0, got {}", max_waiting);
  for (int i = 0; i < n_slots; ++i) {
    std::unique_ptr<InferenceEngine> e;
    compute_.run([&] { e = make_engine(model, n_ctx, backend, kv); });
    slots_.push_back(std::make_unique<Slot>(i, std::move(e), compute_));
  }
  busy_.assign(slots_.size(), 0);
  last_used_.assign(slots_.size(), 0);
}

SlotPool::~SlotPool() { close(); }

Slot& SlotPool::acquire(std::span<const int32_t> prompt, const std::function<bool()>& give_up) {
  std::unique_lock lk(m_);
  if (closed_) fail("the server is shutting down");
  const bool any_free = std::find(busy_.begin(), busy_.end(), 0) != busy_.end();
  if (!(any_free && line_.empty()) && static_cast<int>(line_.size()) >= max_waiting_) {
    throw QueueFull(fmt::format("all {} slots are busy and {} requests are waiting", slots_.size(), line_.size()));
  }
  const uint64_t ticket = next_ticket_++;
  line_.push_back(ticket);
  auto my_turn = [&] { return closed_ || (line_.front() == ticket && std::find(busy_.begin(), busy_.end(), 0) != busy_.end()); };
  while (!my_turn()) {
    cv_.wait_for(lk, std::chrono::milliseconds(100));
    if (!my_turn() && give_up && give_up()) {
      line_.erase(std::find(line_.begin(), line_.end(), ticket));
      cv_.notify_all();
      fail("gave up waiting for a slot");
    }
  }
  line_.erase(std::find(line_.begin(), line_.end(), ticket));
  if (closed_) {
    cv_.notify_all();
    fail("the server is shutting down");
  }
  // Of the free slots: the longest common prefix, then the least recently used.
  size_t best = slots_.size();
  int64_t best_prefix = -1;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (busy_[i]) continue;
    const int64_t p = slots_[i]->common_prefix(prompt);
    if (best == slots_.size() || p > best_prefix || (p == best_prefix && last_used_[i] < last_used_[best])) {
      best = i;
      best_prefix = p;
    }
  }
  busy_[best] = 1;
  last_used_[best] = ++clock_;
  cv_.notify_all();
  return *slots_[best];
}

void SlotPool::release(Slot& s) {
  {
    std::lock_guard lk(m_);
    busy_[static_cast<size_t>(s.id())] = 0;
    last_used_[static_cast<size_t>(s.id())] = ++clock_;
  }
  cv_.notify_all();
}

void SlotPool::close() {
  {
    std::lock_guard lk(m_);
    closed_ = true;
  }
  cv_.notify_all();
}

int SlotPool::running() const {
  std::lock_guard lk(m_);
  return static_cast<int>(std::count(busy_.begin(), busy_.end(), 1));
}

int SlotPool::waiting() const {
  std::lock_guard lk(m_);
  return static_cast<int>(line_.size());
}

}  // namespace dashlm
