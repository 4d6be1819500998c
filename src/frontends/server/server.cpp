#include "frontends/server/server.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json.h"
#include "common/timing.h"
#include "frontends/cli/halting_output.h"
#include "frontends/server/api.h"
#include "frontends/server/metrics.h"
#include "model/chat.h"
#include "model/model.h"
#include "runtime/session.h"
#include "runtime/slots.h"
#include "server_page.h"

namespace dashlm::server {

namespace {

using nlohmann::json;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// A request ready for a slot.
struct Job {
  GenerationRequest req;
  Prompt prompt;  // the document (may halt: system prompt, earlier turns) and the query (the last turn)
  std::vector<int32_t> tokens;
  HaltingConfig halting;
  int64_t max_tokens = 0;
  Clock::time_point arrival, deadline;
  std::string id;
  int64_t created = 0;
};

struct Outcome {
  std::string text, finish_reason;
  Usage usage;
  DashReport dash;
};

// A slot held by one request; released (and, after a failure, emptied) when dropped.
class Lease {
 public:
  Lease(SlotPool& pool, Slot& slot) : pool_(pool), slot_(&slot) {}
  ~Lease() { release(); }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  Slot& slot() { return *slot_; }
  void release() {
    if (slot_) pool_.release(*slot_);
    slot_ = nullptr;
  }

 private:
  SlotPool& pool_;
  Slot* slot_;
};

// Thrown out of a prefill whose request ran out of time (between layers).
class TimedOut : public Error {
 public:
  using Error::Error;
};

class App {
 public:
  App(const ServerOptions& o, const Model& model, int64_t n_ctx)
      : o_(o),
        model_(model),
        pool_(model, o.slots, n_ctx, o.backend, o.queue, resolve_cache_type(o.kv_type, o.backend)),
        id_(o.alias.empty() ? std::filesystem::path(o.model_path).filename().string() : o.alias) {}

  void routes(httplib::Server& svr);
  void shutdown() {
    shutting_down_ = true;
    pool_.close();
  }
  const std::string& id() const { return id_; }
  const SlotPool& pool() const { return pool_; }

 private:
  Job prepare(Endpoint e, const std::string& body);
  Outcome run(Job& j, Slot& slot, const std::function<bool(const std::string&)>& emit);
  void generation(Endpoint e, const httplib::Request& q, httplib::Response& r);
  void send_error(httplib::Response& r, int status, const std::string& type, const std::string& code, const std::string& msg);
  // The handler wrapped so that every failure becomes an OpenAI error object.
  httplib::Server::Handler guarded(std::function<void(const httplib::Request&, httplib::Response&)> f);
  void log(const std::string& line) const {
    if (!o_.quiet) fmt::print(stderr, "{}\n", line);
  }

  const ServerOptions& o_;
  const Model& model_;
  SlotPool pool_;
  Metrics metrics_;
  std::string id_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<uint64_t> next_id_{0};
  std::mutex seed_m_;
  std::mt19937_64 seeds_{std::random_device{}()};
};

void App::send_error(httplib::Response& r, int status, const std::string& type, const std::string& code, const std::string& msg) {
  metrics_.count_error(status);
  r.status = status;
  r.set_content(dump(error_body(msg, type, code)), "application/json");
}

httplib::Server::Handler App::guarded(std::function<void(const httplib::Request&, httplib::Response&)> f) {
  return [this, f = std::move(f)](const httplib::Request& q, httplib::Response& r) {
    try {
      f(q, r);
    } catch (const ApiError& e) {
      send_error(r, e.status, e.type, e.code, e.what());
    } catch (const QueueFull& e) {
      r.set_header("Retry-After", "1");
      send_error(r, 503, "server_error", "queue_full", e.what());
    } catch (const TimedOut& e) {
      send_error(r, 504, "timeout", "timeout", e.what());
    } catch (const Error& e) {
      send_error(r, shutting_down_ ? 503 : 500, "server_error", shutting_down_ ? "shutting_down" : "internal_error", e.what());
    } catch (const std::bad_alloc&) {
      send_error(r, 500, "server_error", "out_of_memory", "out of memory");
    } catch (const std::exception& e) {
      send_error(r, 500, "server_error", "internal_error", e.what());
    }
  };
}

Job App::prepare(Endpoint e, const std::string& body) {
  Job j;
  j.arrival = Clock::now();
  j.deadline = j.arrival + std::chrono::milliseconds(static_cast<int64_t>(o_.timeout_s * 1000));
  j.req = parse_generation_request(e, body);
  if (!j.req.model.empty() && j.req.model != id_) {
    throw ApiError(404, "invalid_request_error", "model_not_found", fmt::format("the model '{}' is not served here (this server serves '{}')", j.req.model, id_));
  }
  const Tokenizer& tok = model_.tokenizer();
  if (e == Endpoint::Chat) {
    const ChatFormat f = model_.chat_format();
    ChatText t;
    try {
      t = chat_format_conversation(f, j.req.messages, chat_default_system_prompt(model_.file().meta));
    } catch (const Error& err) {
      bad_request("invalid_value", err.what());
    }
    const bool special = f != ChatFormat::None;
    j.prompt.document = tok.encode(t.history, tok.add_bos_default(), special);
    j.prompt.query = tok.encode(t.last_turn, false, special);
  } else {
    j.prompt.document = tok.encode(j.req.prompt, tok.add_bos_default(), false);
  }
  j.tokens = j.prompt.tokens();
  const auto n = static_cast<int64_t>(j.tokens.size());
  const int64_t n_ctx = pool_.n_ctx();
  if (n == 0) bad_request("invalid_value", "empty prompt: it has no tokens");
  if (n >= n_ctx) {
    throw ApiError(400, "invalid_request_error", "context_length_exceeded",
                   fmt::format("the prompt has {} tokens; this server's context holds {} per request, the answer included", n, n_ctx));
  }
  const int64_t room = n_ctx - n;
  j.max_tokens = std::min(room, j.req.max_tokens.value_or(e == Endpoint::Chat ? room : 16));
  if (!j.req.seeded) {
    std::lock_guard lk(seed_m_);
    j.req.sampling.seed = seeds_();
  }
  j.req.sampling.validate();
  j.halting = resolve_dash(j.req.dash, o_.halting, model_.hp().n_layer, o_.seed, o_.model_path);
  j.created = unix_now();
  j.id = fmt::format("{}-{:x}{:06x}", e == Endpoint::Chat ? "chatcmpl" : "cmpl", j.created, next_id_++);
  return j;
}

Outcome App::run(Job& j, Slot& slot, const std::function<bool(const std::string&)>& emit) {
  const HParams& hp = model_.hp();
  Outcome out;
  try {
    // What the slot's cache already holds of this prompt is not prefilled again.
    const int64_t cached = slot.reuse(j.tokens);
    const auto nd = static_cast<int64_t>(j.prompt.document.size());
    Prompt rest;
    if (cached < nd) {
      rest.document.assign(j.prompt.document.begin() + cached, j.prompt.document.end());
      rest.query = j.prompt.query;
    } else {
      rest.query.assign(j.prompt.query.begin() + (cached - nd), j.prompt.query.end());
    }
    // Halting thins out the document (what was not cached of it); the last turn runs in full.
    const bool halting = j.halting.enabled() && !rest.document.empty();
    Session session(slot, model_.tokenizer());
    HaltingTrace trace;
    PrefillRequest pq;
    pq.halting = halting ? &j.halting : nullptr;
    pq.trace = halting ? &trace : nullptr;
    pq.trace_deltas = j.req.halting_map;  // the statistics need no deltas; the map draws them
    pq.progress = [&](int, int) {
      if (Clock::now() > j.deadline) throw TimedOut(fmt::format("the request ran out of its {} s during prefill", o_.timeout_s));
    };
    const PrefillResult pr = session.prefill(rest, pq);
    const double prefill_ms = pr.document_ms + pr.query_ms;

    StopMatcher stops(j.req.stop);
    bool client_gone = false, timed_out = false;
    double ttft_s = -1;
    GenerateOptions go;
    go.max_tokens = j.max_tokens;
    go.sampling = j.req.sampling;
    go.ignore_eos = j.req.ignore_eos;
    go.on_text = [&](const std::string& piece) {
      if (ttft_s < 0) ttft_s = ms_since(j.arrival) / 1000.0;
      const std::string text = stops.push(piece);
      out.text += text;
      if (!text.empty() && !emit(text)) {
        client_gone = true;
        return false;
      }
      if (stops.stopped()) return false;
      if (Clock::now() > j.deadline || shutting_down_) {
        timed_out = true;
        return false;
      }
      return true;
    };
    const Generation g = session.generate(pr.last(hp.n_vocab), j.tokens.back(), go);
    if (ttft_s < 0) ttft_s = ms_since(j.arrival) / 1000.0;
    if (!client_gone && !stops.stopped()) {
      const std::string rest_text = stops.flush();
      out.text += rest_text;
      if (!rest_text.empty()) emit(rest_text);
    }
    std::vector<int32_t> held = j.tokens;
    held.insert(held.end(), g.ids.begin(), g.ids.end());
    slot.set_cached(std::move(held));

    out.finish_reason = g.stop_reason == "eos" || stops.stopped() ? "stop" : "length";
    out.usage = {static_cast<int64_t>(j.tokens.size()), static_cast<int64_t>(g.ids.size()), cached};
    out.dash.prefill_ms = prefill_ms;
    out.dash.cached_tokens = cached;
    out.dash.prefilled_tokens = rest.size();
    out.dash.halting = halting ? j.halting.describe(hp.n_layer) : "none";
    if (halting && !trace.active_per_layer.empty()) {
      out.dash.halted_tokens = trace.n_tokens - trace.active_per_layer.back();
      out.dash.flop_speedup = trace.flop_speedup();
      if (j.req.halting_map) out.dash.halting_map = cli::halting_map_svg(trace, j.halting.describe(hp.n_layer));
    }
    RequestRecord rec;
    rec.prompt_tokens = out.usage.prompt_tokens;
    rec.generated_tokens = out.usage.completion_tokens;
    rec.cached_tokens = cached;
    rec.prefilled_tokens = rest.size();
    rec.halted_tokens = out.dash.halted_tokens;
    rec.ttft_s = ttft_s;
    rec.prefill_s = prefill_ms / 1000.0;
    rec.flop_speedup = out.dash.flop_speedup;
    rec.halting = halting;
    metrics_.record(rec);
    log(fmt::format("{} slot {}: prompt {} (cached {}), generated {} ({}{}), prefill {:.0f} ms, ttft {:.0f} ms{}", j.id,
                    slot.id(), out.usage.prompt_tokens, cached, out.usage.completion_tokens, out.finish_reason,
                    client_gone ? ", client gone" : timed_out ? ", out of time" : "", prefill_ms, ttft_s * 1000,
                    halting ? fmt::format(", {} halted {} FLOP speedup {:.2f}x", out.dash.halting, out.dash.halted_tokens, out.dash.flop_speedup) : ""));
  } catch (...) {
    // The cache may hold part of a prefill: start the slot afresh.
    slot.reset();
    throw;
  }
  return out;
}

void App::generation(Endpoint e, const httplib::Request& q, httplib::Response& r) {
  auto job = std::make_shared<Job>(prepare(e, q.body));
  auto lease = std::make_shared<Lease>(pool_, pool_.acquire(job->tokens, [job] { return Clock::now() > job->deadline; }));
  if (!job->req.stream) {
    const Outcome out = run(*job, lease->slot(), [](const std::string&) { return true; });
    lease->release();
    r.set_content(dump(completion_json(e, job->id, job->created, id_, out.text, out.finish_reason, out.usage, out.dash)),
                  "application/json");
    return;
  }
  r.set_header("Cache-Control", "no-cache");
  r.set_chunked_content_provider("text/event-stream", [this, e, job, lease](size_t, httplib::DataSink& sink) {
    bool alive = true;
    auto send = [&](const json& j) {
      const std::string s = "data: " + dump(j) + "\n\n";
      alive = alive && sink.write(s.data(), s.size());
      return alive;
    };
    if (e == Endpoint::Chat) send(chunk_json(e, job->id, job->created, id_, "", nullptr, true));
    try {
      const Outcome out = run(*job, lease->slot(), [&](const std::string& t) { return send(chunk_json(e, job->id, job->created, id_, t, nullptr)); });
      lease->release();
      send(chunk_json(e, job->id, job->created, id_, "", &out.finish_reason));
      if (job->req.include_usage) {
        json u = chunk_json(e, job->id, job->created, id_, "", nullptr);
        u["choices"] = json::array();
        u["usage"] = usage_json(out.usage);
        u["dashlm"] = dash_json(out.dash);
        send(u);
      }
    } catch (const std::exception& ex) {
      lease->release();
      // The status line went out already: the error travels as an event.
      const bool timeout = dynamic_cast<const TimedOut*>(&ex) != nullptr;
      metrics_.count_error(timeout ? 504 : 500);
      send(error_body(ex.what(), timeout ? "timeout" : "server_error", timeout ? "timeout" : "internal_error"));
    }
    if (alive) {
      static const std::string done = "data: [DONE]\n\n";
      sink.write(done.data(), done.size());
    }
    sink.done();
    return true;
  });
}

void App::routes(httplib::Server& svr) {
  svr.set_payload_max_length(o_.max_body_bytes);
  // Every response of 400 and above without a body gets an OpenAI error object (404 for unknown
  // paths, 413 for a body over the limit, ...).
  svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& q, httplib::Response& r) {
    if (!r.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    // The HTTP library limits form-encoded bodies (curl's and urllib's default content type) to
    // 8 KiB on its own.
    const bool form = q.get_header_value("Content-Type").starts_with("application/x-www-form-urlencoded");
    const std::string msg = r.status == 404   ? "no such endpoint"
                            : r.status == 413 && form
                                ? "a body sent as application/x-www-form-urlencoded may hold 8192 bytes: send it with 'Content-Type: application/json'"
                            : r.status == 413 ? fmt::format("the request body is larger than {} bytes", o_.max_body_bytes)
                                              : fmt::format("HTTP {}", r.status);
    const std::string code = r.status == 404 ? "not_found" : r.status == 413 ? "payload_too_large" : "http_error";
    send_error(r, r.status, "invalid_request_error", code, msg);
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([this](const httplib::Request&, httplib::Response& r, std::exception_ptr) {
    send_error(r, 500, "server_error", "internal_error", "internal error");
  });
  if (!o_.api_key.empty()) {
    svr.set_pre_routing_handler([this](const httplib::Request& q, httplib::Response& r) {
      if (q.path == "/" || q.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      if (q.get_header_value("Authorization") == "Bearer " + o_.api_key) return httplib::Server::HandlerResponse::Unhandled;
      send_error(r, 401, "authentication_error", "invalid_api_key", "a valid API key is needed: send 'Authorization: Bearer KEY'");
      return httplib::Server::HandlerResponse::Handled;
    });
  }
  svr.Post("/v1/chat/completions", guarded([this](const auto& q, auto& r) { generation(Endpoint::Chat, q, r); }));
  svr.Post("/v1/completions", guarded([this](const auto& q, auto& r) { generation(Endpoint::Completion, q, r); }));
  svr.Get("/v1/models", guarded([this](const auto&, auto& r) {
    const HParams& hp = model_.hp();
    json m = {{"id", id_}, {"object", "model"}, {"created", unix_now()}, {"owned_by", "dashlm"},
              {"meta", {{"n_ctx", pool_.n_ctx()}, {"n_ctx_train", hp.n_ctx_train}, {"n_layer", hp.n_layer}, {"arch", hp.arch_str},
                        {"backend", o_.backend}, {"kernels", pool_.kernels()}, {"slots", pool_.size()},
                        {"halting", o_.halting.enabled() ? o_.halting.describe(hp.n_layer) : "none"}}}};
    r.set_content(dump({{"object", "list"}, {"data", json::array({m})}}), "application/json");
  }));
  svr.Get("/health", [this](const auto&, auto& r) {
    const int running = pool_.running();
    r.set_content(dump({{"status", shutting_down_ ? "shutting down" : "ok"}, {"slots_idle", pool_.size() - running},
                        {"slots_processing", running}, {"requests_waiting", pool_.waiting()}}),
                  "application/json");
    if (shutting_down_) r.status = 503;
  });
  svr.Get("/metrics", [this](const auto&, auto& r) {
    r.set_content(metrics_.text(pool_.running(), pool_.waiting(), pool_.size()), "text/plain; version=0.0.4");
  });
  svr.Post("/tokenize", guarded([this](const auto& q, auto& r) {
    std::vector<int32_t> ids;
    read_request_object(q.body, [&](const JsonObject& o) {
      ids = model_.tokenizer().encode(o.string("content"), o.boolean_or("add_special", false), o.boolean_or("parse_special", true));
    });
    r.set_content(dump({{"tokens", ids}}), "application/json");
  }));
  svr.Post("/detokenize", guarded([this](const auto& q, auto& r) {
    std::vector<int32_t> ids;
    read_request_object(q.body, [&](const JsonObject& o) {
      const json& a = o.array("tokens");
      const int32_t n_vocab = model_.tokenizer().n_vocab();
      for (size_t i = 0; i < a.size(); ++i) {
        if (!a[i].is_number_integer() || a[i].get<int64_t>() < 0 || a[i].get<int64_t>() >= n_vocab) {
          bad_request("invalid_value", fmt::format("tokens[{}] is {}, not a token id of this model (0..{})", i, json_describe(a[i]), n_vocab - 1));
        }
        ids.push_back(a[i].get<int32_t>());
      }
    });
    r.set_content(dump({{"content", model_.tokenizer().decode(ids)}}), "application/json");
  }));
  svr.Get("/", [](const auto&, auto& r) { r.set_content(kServerPage, "text/html; charset=utf-8"); });
}

}  // namespace

int serve(const ServerOptions& o, const Model& model) {
  // SIGINT and SIGTERM are taken by sigwait below, in this thread only: block them before any
  // thread starts (threads inherit the mask). A client gone mid-write must not kill the server.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const int64_t n_ctx = o.ctx > 0 ? o.ctx : std::min<int64_t>(model.hp().n_ctx_train, kDefaultCtx);
  App app(o, model, n_ctx);
  httplib::Server svr;
  // Enough handler threads for every slot, every queued request and a few quick requests
  // (health, metrics, tokenize) beside them.
  const auto threads = static_cast<size_t>(std::clamp(o.slots + o.queue + 8, 8, 1024));
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr.set_read_timeout(std::chrono::seconds(30));
  svr.set_write_timeout(std::chrono::seconds(30));
  app.routes(svr);
  int port = o.port;
  if (port == 0) {
    port = svr.bind_to_any_port(o.host);
    if (port < 0) fail("cannot listen on {}: no free port", o.host);
  } else if (!svr.bind_to_port(o.host, port)) {
    fail("cannot listen on {}:{} (in use, or not an address of this machine)", o.host, port);
  }
  const HParams& hp = model.hp();
  fmt::print(stderr, "model {} ({} layers) | {} slot{} of {} tokens | backend {} | halting {}\n", app.id(), hp.n_layer,
             o.slots, o.slots == 1 ? "" : "s", n_ctx, o.backend, o.halting.enabled() ? o.halting.describe(hp.n_layer) : "none");
  fmt::print(stderr, "listening on http://{}:{}\n", o.host, port);
  std::fflush(stderr);

  std::thread listener([&] {
    svr.listen_after_bind();
    kill(getpid(), SIGTERM);  // the listener stopped on its own: end the wait below
  });
  int sig = 0;
  sigwait(&stop_signals, &sig);
  fmt::print(stderr, "{}: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  app.shutdown();
  svr.stop();
  listener.join();
  return 0;
}

}  // namespace dashlm::server
