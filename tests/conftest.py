"""Shared fixtures: a real HTTP server on 127.0.0.1 with fault injection, and a runner for the package's CLIs."""
import http.server, os, subprocess, sys, threading
from dataclasses import asdict
from pathlib import Path
import pytest
import torch
from browser import browser, chromium_driver  # noqa: F401  (the headless Chromium fixture)
from jupyter_lab import lab  # noqa: F401  (a JupyterLab server fixture)

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


def cli_env(base) -> dict:
    """Environment for CLI subprocesses: base dir `base`, nothing inherited that would redirect data, dtype or ranks,
    one BLAS thread (tests run beside each other), no wandb network."""
    drop = ("NANOCHAT_DATA_DIR", "NANOCHAT_DTYPE", "NANOCHAT_TASKS_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def base_env(tmp_path):
    return cli_env(tmp_path / "base")


def tiny_checkpoint(base: Path, phase_dir: str, corpus_chars: int, vocab_size: int, nudge: float = 0.0):
    """Under `base`: an embedded corpus of `corpus_chars`, a tokenizer trained on half of it, and a random d2 GPT
    (weights moved by `nudge` x randn, so it is not the flat initial model) saved as `<phase_dir>/d2` step 0."""
    from nanochat_nb.checkpoint import save_checkpoint
    from nanochat_nb.dataset import iter_documents, write_synthetic_corpus
    from nanochat_nb.gpt import GPTConfig, build_model
    from nanochat_nb.tokenizer import Tokenizer
    half = corpus_chars // 2
    write_synthetic_corpus(corpus_chars, shard_chars=half, data_dir=base / "base_data", num_workers=1, verbose=False)
    tok = Tokenizer.train_from_iterator(iter_documents("train", max_chars=half, data_dir=base / "base_data"), vocab_size)
    tok.save(base / "tokenizer")
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=256, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64,
                    window_pattern="L")
    model = build_model(cfg, "cpu")
    if nudge:
        with torch.no_grad():
            for p in model.parameters(): p.add_(nudge * torch.randn_like(p))
    save_checkpoint(base / phase_dir / "d2", 0, model.state_dict(), None,
                    dict(step=0, model_config=asdict(cfg), tokenizer_dir=str(base / "tokenizer")))
    return tok


def run_module(module, *args, env=None, timeout=300, check=True):
    """Run `python -m nanochat_nb.<module> args...` and return the CompletedProcess."""
    cmd = [sys.executable, "-m", f"nanochat_nb.{module}", *map(str, args)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p
