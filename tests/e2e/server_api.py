"""dashlm serve end to end: the official openai client and raw HTTP against the real server on
the loopback address, on stories260K (and SmolLM2-135M-Instruct when downloaded)."""
import concurrent.futures as cf
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from common import SKIP, args, run

try:
    import openai
except ImportError:
    print("SKIP: the openai Python package is not installed (scripts/setup installs it)")
    sys.exit(SKIP)


class Server:
    def __init__(self, binary, *flags):
        self.p = subprocess.Popen([binary, "serve", "--port", "0", *flags], stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.p.stderr.readline()
            if not line:
                raise AssertionError("server exited before listening:\n" + "".join(self.log))
            self.log.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise AssertionError("server did not listen within 60 s")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.p.stderr:
            self.log.append(line)

    def request(self, method, path, body=None, headers=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = dict(headers or {})
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)

    def rss_kib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(timeout=30)
        assert rc == 0, f"server exit code {rc} after SIGTERM:\n{''.join(self.log)}"


def expect_status(srv, status, path, body=None, code=None, raw=None, headers=None):
    got, text, hdrs = srv.request("POST" if body is not None or raw is not None else "GET", path, body, headers, raw)
    assert got == status, f"{path} {str(body)[:80]}: expected {status}, got {got}: {text[:300]}"
    err = json.loads(text)["error"]
    assert err["message"] and err["type"], err
    if code:
        assert err["code"] == code, f"expected code {code}, got {err}"
    print(f"ok  {status} {err['code']}: {err['message'][:100]}")
    return hdrs


def main():
    binary, shared, source = args()
    stories = os.path.join(shared, "models", "stories260K")
    mflags = ["-m", os.path.join(stories, "stories260K.bin"), "--tokenizer", os.path.join(stories, "tok512.bin"), "-t", "2"]
    prompt = "Once upon a time"

    # The CLI's greedy answer is the oracle.
    want = run(binary, "run", *mflags, "-p", prompt, "-n", "24", "-q").stdout.decode().strip()

    srv = Server(binary, *mflags, "--slots", "2", "--queue", "64")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        models = client.models.list()
        model = models.data[0].id

        # Completions, non-streamed and streamed.
        c = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
        assert c.choices[0].text.strip() == want, (c.choices[0].text, want)
        assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens == 24
        parts = [ch.choices[0].text for ch in client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0, stream=True) if ch.choices]
        assert "".join(parts).strip() == want
        print("ok  completions (plain and streamed) equal the CLI's greedy answer")

        # Chat, non-streamed and streamed (stories260K has no chat template: the text is the message).
        msgs = [{"role": "user", "content": prompt}]
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
        assert r.choices[0].message.content.strip() == want
        stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        text, usage = "", None
        for ch in stream:
            if ch.choices and ch.choices[0].delta.content:
                text += ch.choices[0].delta.content
            if ch.usage:
                usage = ch.usage
        assert text.strip() == want and usage and usage.completion_tokens == 24
        print("ok  chat (plain and streamed, with usage)")

        # Stop strings end the answer before them.
        r = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0, stop=["little"])
        assert r.choices[0].finish_reason == "stop" and want.startswith(r.choices[0].text.strip()) and "little" not in r.choices[0].text
        print("ok  stop string")

        # A second turn reuses the first turn's cache: it prefills only the new tokens.
        story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
        t1 = client.chat.completions.create(model=model, messages=[{"role": "user", "content": story}], max_tokens=16, temperature=0)
        t2msgs = [{"role": "user", "content": story}, {"role": "assistant", "content": t1.choices[0].message.content},
                  {"role": "user", "content": "One day, she saw a big dog."}]
        t2 = client.chat.completions.with_raw_response.create(model=model, messages=t2msgs, max_tokens=16, temperature=0)
        t2j = json.loads(t2.text)
        cached = t2j["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= t1.usage.prompt_tokens, (cached, t1.usage.prompt_tokens)
        assert t2j["dashlm"]["prefilled_tokens"] == t2j["usage"]["prompt_tokens"] - cached
        # The answer with reuse equals the answer from an empty cache (a fresh server would give it;
        # here: the same conversation with another first token breaks the prefix, then compare).
        print(f"ok  second turn: {cached} of {t2j['usage']['prompt_tokens']} prompt tokens cached")

        # DASH per request, in the response's statistics.
        long_prompt = " ".join([story] * 8)
        resp = srv.request("POST", "/v1/completions", {"prompt": long_prompt, "max_tokens": 4, "temperature": 0,
                                                       "dash": {"policy": "topk", "halt_layer": 2, "keep": 0.25}, "halting_map": True})
        assert resp[0] == 200, resp
        d = json.loads(resp[1])["dashlm"]
        assert d["halting"].startswith("topk") and d["halted_tokens"] > 0 and d["flop_speedup"] > 1, d
        assert d["halting_map_svg"].startswith("<svg"), d.keys()
        resp = srv.request("POST", "/v1/completions", {"prompt": long_prompt + " x", "max_tokens": 4, "temperature": 0, "dash": "none"})
        assert json.loads(resp[1])["dashlm"]["halted_tokens"] == 0
        print(f"ok  per-request DASH: {d['halting']}, {d['halted_tokens']} halted, FLOP speedup {d['flop_speedup']:.2f}x")

        # Bad input: status and error object.
        expect_status(srv, 400, "/v1/chat/completions", raw=b"{not json", code="invalid_json")
        expect_status(srv, 400, "/v1/chat/completions", {"messages": "hi"})
        expect_status(srv, 400, "/v1/chat/completions", {"max_tokens": 3})
        expect_status(srv, 400, "/v1/chat/completions", {"messages": []})
        expect_status(srv, 400, "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]})
        expect_status(srv, 400, "/v1/chat/completions", {"messages": msgs, "max_tokens": "many"})
        expect_status(srv, 400, "/v1/chat/completions", {"messages": msgs, "temperature": 9})
        expect_status(srv, 400, "/v1/chat/completions", {"messages": msgs, "n": 2}, code="unsupported")
        expect_status(srv, 400, "/v1/chat/completions", {"messages": msgs, "tools": [{"type": "function"}]}, code="unsupported")
        expect_status(srv, 400, "/v1/completions", {"prompt": ""})
        expect_status(srv, 400, "/v1/completions", {"prompt": "word " * 2000}, code="context_length_exceeded")
        expect_status(srv, 400, "/v1/completions", {"prompt": "x", "dash": {"policy": "psychic"}})
        expect_status(srv, 400, "/v1/completions", {"prompt": "x", "dash": {"policy": "topk", "keep": 2}})
        expect_status(srv, 400, "/v1/completions", {"prompt": "x", "dash": {"policy": "topk", "tau": 0.1}})
        expect_status(srv, 400, "/v1/completions", {"prompt": "x", "dash": "auto"})  # no calibration for this model
        expect_status(srv, 404, "/v1/completions", {"prompt": "x", "model": "gpt-9"}, code="model_not_found")
        expect_status(srv, 404, "/v1/nothing-here")
        expect_status(srv, 400, "/detokenize", {"tokens": [1, 99999]})
        expect_status(srv, 400, "/v1/completions", raw=b"[" * 100000, code="invalid_json")

        # tokenize / detokenize round trip.
        _, tk, _ = srv.request("POST", "/tokenize", {"content": prompt})
        ids = json.loads(tk)["tokens"]
        _, dt, _ = srv.request("POST", "/detokenize", {"tokens": ids})
        assert json.loads(dt)["content"].strip() == prompt, dt

        # Concurrency: the same greedy answers as one at a time.
        prompts = [f"{prompt} {w}" for w in ["the cat", "a dog", "Tim", "the sun", "Lily", "a bird"]]
        alone = [client.completions.create(model=model, prompt=p, max_tokens=20, temperature=0).choices[0].text for p in prompts]
        with cf.ThreadPoolExecutor(6) as ex:
            together = list(ex.map(lambda p: client.completions.create(model=model, prompt=p, max_tokens=20, temperature=0).choices[0].text, prompts))
        assert together == alone, (together, alone)
        print("ok  6 concurrent requests answer as they do one at a time")

        # A client that goes away mid-stream frees its slot.
        req = urllib.request.Request(srv.url + "/v1/completions", method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"prompt": prompt, "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}).encode())
        r = urllib.request.urlopen(req, timeout=60)
        r.readline()
        r.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            h = json.loads(srv.request("GET", "/health")[1])
            if h["slots_processing"] == 0:
                break
            time.sleep(0.1)
        assert h["slots_processing"] == 0, h
        print("ok  a disconnected stream frees its slot")

        # Bounded load: 300 requests from 8 clients, every one answered, memory growth bounded.
        rss0 = srv.rss_kib()
        t0 = time.time()

        def client_loop(k):
            ok = 0
            for i in range(300 // 8 + (1 if k < 300 % 8 else 0)):
                if time.time() - t0 > 600:
                    break
                r = client.completions.create(model=model, prompt=f"{prompt} {k} {i}", max_tokens=8, temperature=0.7, seed=i)
                ok += r.choices[0].finish_reason in ("stop", "length")
            return ok

        with cf.ThreadPoolExecutor(8) as ex:
            answered = sum(ex.map(client_loop, range(8)))
        rss1 = srv.rss_kib()
        assert answered == 300, answered
        assert rss1 - rss0 < 64 * 1024, f"resident memory grew by {(rss1 - rss0) / 1024:.0f} MiB over 300 requests"
        print(f"ok  300 requests from 8 clients in {time.time() - t0:.1f} s, resident memory {rss0 // 1024} -> {rss1 // 1024} MiB")

        metrics = srv.request("GET", "/metrics")[1]
        for name in ["dashlm:prompt_tokens_total", "dashlm:generation_tokens_total", "dashlm:prefix_cache_hit_tokens_total",
                     "dashlm:requests_running", "dashlm:requests_waiting", "dashlm:time_to_first_token_seconds_bucket",
                     "dashlm:prefill_seconds_count", "dashlm:halted_tokens_total", "dashlm:halting_flop_speedup_bucket"]:
            assert name in metrics, name
        assert "<html" in srv.request("GET", "/")[1]
        print("ok  metrics and page")
    finally:
        srv.stop()
    print("ok  SIGTERM: clean exit")

    # One slot, no queue: a second request while the first runs gets 503 with Retry-After. An
    # API key is required; bodies over the limit get 413.
    srv = Server(binary, *mflags, "--slots", "1", "--queue", "0", "--api-key", "sesame", "--max-body", "0.001")
    try:
        auth = {"Authorization": "Bearer sesame", "Content-Type": "application/json"}
        expect_status(srv, 401, "/v1/completions", {"prompt": "x"}, code="invalid_api_key")
        expect_status(srv, 401, "/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer wrong"}, code="invalid_api_key")
        expect_status(srv, 413, "/v1/completions", {"prompt": "x" * 5000}, headers=auth)
        req = urllib.request.Request(srv.url + "/v1/completions", method="POST", headers=auth,
                                     data=json.dumps({"prompt": prompt, "max_tokens": 500, "temperature": 0, "ignore_eos": True, "stream": True}).encode())
        long = urllib.request.urlopen(req, timeout=60)
        long.readline()
        hdrs = expect_status(srv, 503, "/v1/completions", {"prompt": "x", "max_tokens": 2}, headers=auth, code="queue_full")
        assert hdrs.get("Retry-After") == "1", hdrs
        long.read()
        status, _, _ = srv.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2}, headers=auth)
        assert status == 200
    finally:
        srv.stop()

    # SmolLM2 (ChatML) when downloaded: the second turn of a chat prefills only the new tokens.
    smol = os.path.join(source, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(smol):
        srv = Server(binary, "-m", smol, "-t", "2", "--ctx", "2048")
        try:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
            model = client.models.list().data[0].id
            m1 = [{"role": "user", "content": "What is the capital of France?"}]
            a1 = client.chat.completions.create(model=model, messages=m1, max_tokens=24, temperature=0)
            want1 = run(binary, "run", "-m", smol, "-t", "2", "--chat", "-p", "What is the capital of France?", "-n", "24", "-q").stdout.decode().strip()
            assert a1.choices[0].message.content.strip() == want1, (a1.choices[0].message.content, want1)
            m2 = m1 + [{"role": "assistant", "content": a1.choices[0].message.content}, {"role": "user", "content": "And of Italy?"}]
            a2 = client.chat.completions.create(model=model, messages=m2, max_tokens=24, temperature=0)
            cached = a2.usage.prompt_tokens_details.cached_tokens
            assert cached >= a1.usage.prompt_tokens, (cached, a1.usage.prompt_tokens)
            print(f"ok  SmolLM2 chat: answer equals run --chat; second turn {cached} of {a2.usage.prompt_tokens} tokens cached: {a2.choices[0].message.content!r}")
        finally:
            srv.stop()
    else:
        print("note: SmolLM2 not downloaded; its chat test skipped")
    print("PASS")


if __name__ == "__main__":
    main()
