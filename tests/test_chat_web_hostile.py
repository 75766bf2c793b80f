"""The chat server against hostile clients, over raw sockets where a polite client library would not do it: JSON nested
50,000 deep, temperatures like 1e-300, 300 MB bodies with and without Content-Length (refused before they are read:
the server's memory is measured), fifty clients sending a byte a second (cut off at the deadline), garbage HTTP, and a
catalogue of malformed fields. Every bad request gets a 4xx in OpenAI's error shape and the server keeps answering.
The server is the real `python -m nanochat_nb.chat_web` command, so its memory is its own."""
import json, select, socket, subprocess, sys, time
from dataclasses import asdict
import httpx
import pytest
import torch

from conftest import cli_env

TIMEOUT = 2.0           # the server's --request-timeout in these tests (seconds)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's memory from /proc")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    "The real command on a tiny byte-tokenizer checkpoint: (url, port, pid, access log path)."
    from nanochat_nb.checkpoint import save_checkpoint
    from nanochat_nb.gpt import GPTConfig, build_model
    from nanochat_nb.tokenizer import Tokenizer
    base = tmp_path_factory.mktemp("hostile") / "base"
    tok = Tokenizer.from_merges([bytes([i]) for i in range(256)])
    tok.save(base / "tokenizer")
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=128, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=2, n_embd=32,
                    window_pattern="L")
    save_checkpoint(base / "chatsft_checkpoints" / "d1", 0, build_model(cfg, "cpu").state_dict(), None,
                    dict(step=0, model_config=asdict(cfg), tokenizer_dir=str(base / "tokenizer")))
    log = base / "access.log"
    cmd = [sys.executable, "-m", "nanochat_nb.chat_web", "--port", "0", "--device-type", "cpu", "-m", "8",
           "--request-timeout", str(TIMEOUT), "--access-log", str(log)]
    proc = subprocess.Popen(cmd, env=cli_env(base), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert " at http://" in line, f"no address printed: {line!r}"
        url = line.rsplit(" at ", 1)[1].strip().rstrip("/")
        yield url, int(url.rsplit(":", 1)[1]), proc.pid, log
    finally:
        proc.kill(); proc.wait()                                        # (a clean Ctrl-C stop is test_chat_web's business)


def rss_mb(pid) -> float:
    "Resident memory of a process, MB."
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def alive(url):
    assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"


def is_error(r, status):
    "A JSON error in OpenAI's shape with this status."
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    assert err["type"] == ("invalid_request_error" if status < 500 else "server_error"), err
    return err


def response_of(raw: bytes):
    "Status code and JSON body of a raw HTTP response."
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else None


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("depth", [20_000, 50_000])
def test_deeply_nested_json_is_a_400(server, path, depth):
    url, *_ = server
    nested_list = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    nested_obj = b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b'{"a": ' * depth + b"1" + b"}" * (depth + 1)
    for body in (nested_list, nested_obj):
        err = is_error(httpx.post(url + path, content=body, timeout=30), 400)
        assert "nests JSON too deeply" in err["message"]
    alive(url)


@pytest.mark.parametrize("t", [1e-300, 5e-324, 1e-30, 1e-20])
def test_tiny_temperatures_decode_greedily(server, t):
    url, *_ = server
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    greedy = httpx.post(url + "/v1/chat/completions", json={**body, "temperature": 0}, timeout=30).json()
    r = httpx.post(url + "/v1/chat/completions", json={**body, "temperature": t, "seed": 3}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]
    events = [json.loads(l[6:]) for l in httpx.post(url + "/chat/completions", json={**body, "temperature": t}, timeout=30)
              .text.splitlines() if l.startswith("data: ")]
    assert events[-1]["done"] is True and not any("error" in e for e in events)


HOSTILE = [  # (body, what the message says): each must be a 400 on both endpoints
    (b"", "malformed JSON"),
    (b"null", "must be a JSON object"),
    (b"NaN", "must be a JSON object"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "'temperature' is nan"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "'temperature' is inf"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e999}', "'max_tokens' must be an integer"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"7" * 5000 + b"}", "malformed JSON"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": -1}', "'seed' is -1"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}', "'seed' is 18446744073709551616"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "lone surrogate"),
    (b'{"messages": [{"role": "user", "content": "a\\u0000b"}], "top_k": true}', "'top_k' must be an integer"),
    (b'{"messages": [{"role": ["user"], "content": "hi"}]}', "role is a list"),
    (b'{"messages": [{"role": "user", "content": {"text": "hi"}}]}', "content must be a string, not dict"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', "only text parts"),
    (b'{"messages": [null]}', "messages[0] must be an object"),
    (b'{"messages": {"role": "user"}}', "'messages' must be a non-empty list"),
    (b'{"messages": [{"role": "system", "content": "x"}]}', "the last message must be the user's"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "'stream' must be true or false"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', "'n' is 2"),
    (b"\xff\xfe\x00{", "malformed JSON"),
    (b'{"messages": [{"role": "user", "content": "hi"}]} trailing', "malformed JSON"),
]


@pytest.mark.parametrize("path", ["/chat/completions", "/v1/chat/completions"])
def test_hostile_fields_are_400s(server, path):
    url, *_ = server
    with httpx.Client(base_url=url, timeout=30) as c:
        for body, message in HOSTILE:
            err = is_error(c.post(path, content=body, headers={"Content-Type": "application/json"}), 400)
            assert message in err["message"], (body[:60], err["message"])
    alive(url)


def upload(port: int, head: bytes, chunked: bool, total: int = 300_000_000, then: int = 40_000_000):
    """Send `head`, then a body of `total` bytes as fast as the server takes it (chunked or plain), watching for a
    response. Returns (the response, body bytes sent when it began); after it, sends up to `then` bytes more."""
    block = b"x" * 65536
    frame = (b"%x\r\n" % len(block)) + block + b"\r\n" if chunked else block
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head)
    s.setblocking(False)
    sent, answered, raw, pending = 0, None, b"", memoryview(frame)
    try:
        while sent < total and (answered is None or sent < answered + then):
            readable, writable, _ = select.select([s], [s], [], 10)
            if not (readable or writable): break
            if readable:
                got = s.recv(65536)
                if answered is None: answered = sent
                raw += got
                if not got: break                                         # the server closed the connection
            if writable:
                try: pending = pending[s.send(pending):]
                except BlockingIOError: continue
                if not len(pending): sent, pending = sent + len(block), memoryview(frame)
    except (BrokenPipeError, ConnectionResetError): pass
    finally: s.close()
    return raw, sent if answered is None else answered


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300mb_body_is_refused_before_it_is_read(server, chunked):
    url, port, pid, _ = server
    alive(url)
    before = rss_mb(pid)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + (b"Transfer-Encoding: chunked\r\n" if chunked else b"Content-Length: 300000000\r\n") + b"\r\n")
    raw, sent_before_answer = upload(port, head, chunked)
    status, body = response_of(raw)
    assert status == 413 and body["error"]["code"] == "body_too_large", raw[:300]
    assert sent_before_answer < 8_000_000, sent_before_answer           # answered long before 300 MB (limit: 1 MB)
    assert rss_mb(pid) - before < 40, (before, rss_mb(pid))             # and nothing it was sent was kept
    alive(url)


def test_slow_clients_are_cut_off_at_the_deadline(server):
    "Fifty clients sending a byte a second: headers (slowloris), a body, or nothing at all. All get a 408 in time."
    url, port, pid, log = server
    request = b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n" + b'{"messages": [' * 4
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(50)]
    kinds = ["headers", "body", "silent"]
    start = [0, request.index(b"\r\n\r\n") + 4, None]                    # where each kind's byte-a-second begins
    for i, s in enumerate(socks):
        kind = i % 3
        if kind == 1: s.sendall(request[:start[1]])                      # headers at once, then the body trickles
        s.setblocking(False)
    t0, pos, closed, answers = time.time(), [start[i % 3] for i in range(50)], {}, {}
    next_byte = t0 + 1
    while len(closed) < 50 and time.time() - t0 < TIMEOUT + 8:
        for i, s in enumerate(socks):
            if i in closed: continue
            try:
                chunk = s.recv(4096)
                if chunk: answers[i] = answers.get(i, b"") + chunk
                else: closed[i] = time.time() - t0
            except BlockingIOError: pass
            except ConnectionResetError: closed[i] = time.time() - t0
        if time.time() >= next_byte:                                     # once a second: one more byte each
            next_byte += 1
            for i, s in enumerate(socks):
                if i not in closed and pos[i] is not None and pos[i] < len(request):
                    try: s.send(request[pos[i]:pos[i] + 1]); pos[i] += 1
                    except OSError: pass
        time.sleep(0.05)
    t_health = time.time(); alive(url); health_s = time.time() - t_health
    for s in socks: s.close()
    assert len(closed) == 50, f"{50 - len(closed)} slow clients still connected after {TIMEOUT + 8} s"
    assert max(closed.values()) < TIMEOUT + 3, sorted(closed.values())[-5:]
    for i, a in answers.items():
        status, body = response_of(a)
        assert status == 408 and body["error"]["code"] == "request_timeout", (kinds[i % 3], a[:200])
    assert len(answers) == 50 and health_s < 2
    time.sleep(0.2)
    assert sum(" 408 " in l and "(too slow)" in l for l in log.read_text().splitlines()) >= 50


@pytest.mark.parametrize("raw,status", [(b"GARBAGE\r\n\r\n", 400),
                                        (b"GET / HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n", 400),
                                        (b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
                                        (b"POST /chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400)])
def test_malformed_http_gets_a_json_400(server, raw, status):
    url, port, *_ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        got = b""
        try:
            while chunk := s.recv(65536): got += chunk
        except (socket.timeout, ConnectionResetError): pass
    code, body = response_of(got)
    assert code == status and body["error"]["code"] == "malformed_http", got[:300]
    alive(url)


def test_the_access_log_has_one_line_per_request(server):
    url, port, pid, log = server
    marker = f"/health?probe={time.monotonic_ns()}"
    httpx.get(url + marker, timeout=10)
    httpx.post(url + "/v1/completions%0Aforged", json={}, timeout=10)
    time.sleep(0.2)
    lines = log.read_text().splitlines()
    assert sum(marker in l and '" 200 ' in l for l in lines) == 1
    assert [l for l in lines if "forged" in l][0].endswith("s") and not any(l.startswith("forged") for l in lines)
