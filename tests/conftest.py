"""Shared fixtures: a real HTTP server on 127.0.0.1 with fault injection, and a runner for the package's CLIs."""
import http.server, os, subprocess, sys, threading
from pathlib import Path
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class FaultyHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `server.root`; `server.faults[name]` is a list of faults consumed one per request:
    an int status code (e.g. 503) answers with that code, 'cut' sends half the body then closes the connection."""
    def log_message(self, *a): pass

    def do_GET(self):
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        faults = self.server.faults.get(name, [])
        fault = faults.pop(0) if faults else None
        if isinstance(fault, int):
            self.send_error(fault); return
        path = self.server.root / name
        if not path.is_file():
            self.send_error(404); return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "cut":
            self.wfile.write(body[: len(body) // 2]); self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FaultyHandler)
    srv.root, srv.faults, srv.requests = root, {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()


@pytest.fixture
def base_env(tmp_path):
    """Environment for CLI subprocesses: a private base dir, no inherited data dir, no wandb network."""
    env = {k: v for k, v in os.environ.items() if k not in ("NANOCHAT_DATA_DIR", "NANOCHAT_DTYPE", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(NANOCHAT_BASE_DIR=str(tmp_path / "base"), WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env


def run_module(module, *args, env=None, timeout=300, check=True):
    """Run `python -m nanochat_nb.<module> args...` and return the CompletedProcess."""
    cmd = [sys.executable, "-m", f"nanochat_nb.{module}", *map(str, args)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p
