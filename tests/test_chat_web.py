"""The chat server over real HTTP: nanochat's SSE endpoint, the official `openai` client (streaming and not, tool calls
included), 50 concurrent streams on one CPU replica, a client hanging up mid-stream, every bad input with its 4xx, unknown
routes in OpenAI's error shape, and the real `python -m nanochat_nb.chat_web` command on a tiny checkpoint, with its
access log. (Hostile clients: test_chat_web_hostile.py.)"""
import asyncio, json, os, signal, subprocess, sys, time
import httpx
import pytest

from nanochat_nb.chat import reply_gpt
from nanochat_nb.chat_web import BackgroundServer, ChatLimits, SlowEngine, create_app, parse_sse
from nanochat_nb.engine import Engine
from nanochat_nb.tokenizer import Tokenizer

from conftest import cli_env, run_module, tiny_checkpoint

REPLY = "Sure, 6*7 is <|python_start|>6*7<|python_end|><|output_start|>42<|output_end|>. 🙂"
MODEL = "nanochat_nb-test"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_merges([bytes([i]) for i in range(256)])


@pytest.fixture(scope="module")
def server(tok):
    with BackgroundServer(create_app([Engine(reply_gpt(tok, REPLY), tok)], MODEL, temperature=0.0)) as srv:
        yield srv


def chat(url, path="/chat/completions", **body):
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return httpx.post(url + path, json=body, timeout=30)


def test_health_models_stats_page(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["num_replicas"] == 1 and h["model"] == MODEL
    m = httpx.get(server.url + "/v1/models").json()
    assert m["object"] == "list" and [d["id"] for d in m["data"]] == [MODEL]
    s = httpx.get(server.url + "/stats").json()
    assert s["total_workers"] == 1 and s["workers"][0]["device"] == "cpu"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script>" in page.text and "http://" not in page.text and "https://" not in page.text


def test_native_stream_arrives_in_pieces(server):
    events, arrivals = [], []
    with httpx.stream("POST", server.url + "/chat/completions", json={"messages": [{"role": "user", "content": "6*7?"}]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "): events.append(json.loads(line[6:])); arrivals.append(time.perf_counter())
    tokens = [e for e in events if "token" in e]
    assert "".join(e["token"] for e in tokens) == REPLY and len(tokens) > 20
    assert all(e["gpu"] == 0 for e in tokens) and "🙂" in [e["token"] for e in tokens]   # whole characters only
    assert events[-1]["done"] is True and events[-1]["finish_reason"] == "stop"


def test_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed")
    assert [m.id for m in client.models.list()] == [MODEL]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is 6*7?"}])
    assert r.choices[0].message.content == REPLY and r.choices[0].finish_reason == "stop"
    [call] = r.choices[0].message.tool_calls                                  # the calculator call, also in OpenAI's form
    assert (call.type, call.function.name, json.loads(call.function.arguments)) == ("function", "calculator", {"expression": "6*7"})
    assert call.model_extra["output"] == "42" and call.id.startswith("call_")
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Sure", "length")
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                                            stream_options={"include_usage": True}, extra_body={"top_k": 5})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY and len(chunks) > 10
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop" and chunks[-1].usage.completion_tokens > 0
    deltas = [t for c in chunks if c.choices for t in (c.choices[0].delta.tool_calls or [])]
    assert [(t.index, t.function.name, t.function.arguments) for t in deltas] == [(0, "calculator", '{"expression": "6*7"}')]
    # a conversation that carries the earlier reply, tool call included
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "6*7?"}, {"role": "assistant", "content": text}, {"role": "user", "content": "thanks"}])
    assert r.choices[0].message.content == REPLY
    with pytest.raises(openai.BadRequestError, match="'temperature' is 5"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5)


BAD = [  # (body, status, message)
    (b"{not json", 400, "malformed JSON"),
    (b'"just a string"', 400, "must be a JSON object"),
    ({"messages": []}, 400, "'messages' must be a non-empty list"),
    ({"messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "x" * 8001}]}, 400, "messages[0] has 8,001 characters; at most 8,000"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 250 + [{"role": "user", "content": "c"}]},
     400, "501 messages; at most 500"),
    ({"messages": [{"role": "user", "content": "x" * 7000}, {"role": "assistant", "content": "y" * 7000}] * 2
                  + [{"role": "user", "content": "x" * 7000}]}, 400, "35,000 characters; at most 32,000"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, 400, "messages[0].role is 'assistant' but must be 'user'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, 400, "last message must be the user's"),
    ({"temperature": 2.01}, 400, "'temperature' is 2.01; it must be in [0.0, 2.0]"),
    ({"temperature": -1}, 400, "'temperature' is -1"),
    ({"temperature": "warm"}, 400, "'temperature' must be a number"),
    ({"top_k": 201}, 400, "'top_k' is 201; it must be in [0, 200]"),
    ({"top_k": -1}, 400, "'top_k' is -1"),
    ({"top_k": 2.5}, 400, "'top_k' must be an integer"),
    ({"max_tokens": 0}, 400, "'max_tokens' is 0; it must be in [1, 4096]"),
    ({"max_tokens": 4097}, 400, "'max_tokens' is 4097"),
    ({"max_completion_tokens": 10_000}, 400, "'max_completion_tokens' is 10000"),
    ({"messages": [{"role": "user", "content": "x" * 1300}], "max_tokens": 10}, 400, "over the model's context of 1,280 tokens"),
    ({"n": 3}, 400, "'n' is 3"),
    (b"[" * 1_000_001, 413, "the limit is 1,000,000"),
]


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("body,status,message", BAD, ids=range(len(BAD)))
def test_bad_input_gets_a_clear_4xx(server, path, body, status, message):
    if isinstance(body, bytes): r = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"})
    else: r = chat(server.url, path, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"] and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("method,path,status", [("POST", "/v1/completions", 404), ("GET", "/v1/embeddings", 404),
                                                ("GET", "/openapi.json", 404), ("GET", "/docs", 404), ("GET", "/redoc", 404),
                                                ("GET", "/chat/completions", 405), ("DELETE", "/v1/chat/completions", 405)])
def test_unknown_routes_answer_like_openai(server, method, path, status):
    r = httpx.request(method, server.url + path, json={"model": MODEL, "prompt": "hi"} if method == "POST" else None)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and f"{method} {path}" in err["message"] and "/v1/chat/completions" in err["message"]
    assert err["code"] == ("unknown_url" if status == 404 else "method_not_allowed")


def test_fifty_concurrent_streams(server):
    before = httpx.get(server.url + "/stats").json()["workers"][0]["requests"]

    async def one(client, i):
        text, done = "", None
        async with client.stream("POST", "/chat/completions", json={"messages": [{"role": "user", "content": f"q{i}"}],
                                                                    "max_tokens": 8}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    d = json.loads(line[6:])
                    text += d.get("token", ""); done = d.get("done", done)
        return text, done

    async def all_of_them():
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(50)))

    t0 = time.perf_counter()
    results = asyncio.run(all_of_them())
    assert results == [("Sure, 6*", True)] * 50, results[:3]
    assert time.perf_counter() - t0 < 60
    s = httpx.get(server.url + "/stats").json()
    assert s["workers"][0]["requests"] - before == 50 and s["busy_workers"] == 0 and s["queued"] == 0
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert chat(server.url, "/v1/chat/completions").json()["choices"][0]["message"]["content"] == REPLY


def test_client_hanging_up_frees_its_replica(tok):
    slow = SlowEngine(Engine(reply_gpt(tok, "word " * 60), tok), delay=0.05)      # 300 byte tokens: 15 s in full
    with BackgroundServer(create_app([slow], MODEL)) as srv:
        stats = lambda: httpx.get(srv.url + "/stats").json()
        body = {"messages": [{"role": "user", "content": "talk"}], "max_tokens": 300}
        with httpx.stream("POST", srv.url + "/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(3)]                       # a few events, then hang up mid-reply
        assert any(l.startswith("data: ") for l in got)
        t0 = time.time()
        while stats()["busy_workers"] and time.time() - t0 < 10: time.sleep(0.05)
        w = stats()["workers"][0]
        assert not w["busy"] and w["last_finish_reason"] == "cancelled" and w["tokens"] < 60
        # the next request is served (and finishes: a short one)
        r = httpx.post(srv.url + "/v1/chat/completions", json={**body, "max_tokens": 3}, timeout=30)
        assert r.json()["choices"][0]["message"]["content"] == "wor"
        # a client of the non-streaming API that gives up (a timeout) stops its generation too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(10, read=0.5))
        t0 = time.time()
        while stats()["busy_workers"] and time.time() - t0 < 10: time.sleep(0.05)
        w = stats()["workers"][0]
        assert not w["busy"] and w["last_finish_reason"] == "cancelled" and w["requests"] == 3
        # a request that waits in the queue while another streams is served once that one hangs up
        async def queued():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                async def hang_up():
                    async with c.stream("POST", "/chat/completions", json=body) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("data: "): return                # first piece: leave
                async def wait_then_chat():
                    await asyncio.sleep(0.2)
                    t = time.perf_counter()
                    r = await c.post("/v1/chat/completions", json={**body, "max_tokens": 2})
                    return r.json()["choices"][0]["message"]["content"], time.perf_counter() - t
                return (await asyncio.gather(hang_up(), wait_then_chat()))[1]
        text, waited = asyncio.run(queued())
        assert text == "wo" and waited < 3, waited            # the abandoned reply (300 tokens) would have taken 15 s


def test_limits_are_flags_and_503_when_the_queue_is_full(tok):
    slow = SlowEngine(Engine(reply_gpt(tok, "word " * 20), tok), delay=0.05)
    with BackgroundServer(create_app([slow], MODEL, ChatLimits(max_message_chars=10, max_queue=1))) as srv:
        assert "at most 10" in chat(srv.url, messages=[{"role": "user", "content": "x" * 11}]).json()["error"]["message"]
        async def crowd():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                return await asyncio.gather(*(c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                                 "max_tokens": 8}) for _ in range(4)))
        replies = asyncio.run(crowd())
        codes = sorted(r.status_code for r in replies)
        assert codes[:2] == [200, 200] and codes[-1] == 503, codes               # one served, one queued, the rest refused
        assert "server is busy" in [r for r in replies if r.status_code == 503][0].json()["error"]["message"]


def test_the_command_serves_a_checkpoint(tmp_path):
    base = tmp_path / "base"
    tiny_checkpoint(base, "chatsft_checkpoints", 100_000, 300, nudge=0.2)
    cmd = [sys.executable, "-m", "nanochat_nb.chat_web", "--port", "0", "--device-type", "cpu", "-m", "6", "-t", "1.0"]
    proc = subprocess.Popen(cmd, env=cli_env(base), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        t0 = time.time()
        while url is None and time.time() - t0 < 60:
            line = proc.stdout.readline()
            if not line: break
            if " at http://" in line: url = line.rsplit(" at ", 1)[1].strip().rstrip("/")
        assert url and url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else "no address printed"
        assert httpx.get(url + "/health", timeout=10).json()["model"] == "nanochat_nb-sft-d2-step0"
        events = parse_sse(httpx.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=30).text)
        assert events[-1]["done"] is True and events[-1]["tokens"] <= 6
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, timeout=30)
        assert r.json()["usage"]["completion_tokens"] <= 3
    finally:
        proc.send_signal(signal.SIGINT)
        try: proc.wait(timeout=15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
    assert proc.returncode in (0, 130), proc.returncode        # Ctrl-C stops a server: 130 is the shell's code for it
    err = proc.stderr.read()
    assert "Traceback" not in err
    log = [l for l in err.splitlines() if '" 200 ' in l]     # the access log, one line per request
    assert [l.split('"')[1] for l in log] == ["GET /health HTTP/1.1", "POST /chat/completions HTTP/1.1",
                                             "POST /v1/chat/completions HTTP/1.1"], log


def test_the_command_fails_clearly(tmp_path):
    p = run_module("chat_web", "--top-k", "500", env=cli_env(tmp_path), check=False, timeout=60)
    assert p.returncode == 1 and "error: --top-k 500 must be in [0, 200]" in p.stderr and "Traceback" not in p.stderr


def test_the_command_needs_checkpoints(tmp_path, monkeypatch):
    from nanochat_nb.chat_web import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no rl checkpoints in .*chatrl_checkpoints"):
        main.cli(["-i", "rl", "--port", "0", "--device-type", "cpu"])
