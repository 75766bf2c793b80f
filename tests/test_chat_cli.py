"""`python -m nanochat_nb.chat_cli` as a user runs it: one prompt (stdout holds only the reply), a piped conversation,
each phase (-i sft / rl / base), replies written piece by piece as they are generated, clear errors for bad flags and
missing checkpoints, and a session in a real terminal (tmux): Ctrl-C mid-reply, the prompt back, history with Up."""
import io, os, re, shutil, subprocess, sys, time
from dataclasses import asdict
import pytest
import torch

from conftest import cli_env, run_module, tiny_checkpoint


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("chatcli") / "base"
    tiny_checkpoint(base, "chatsft_checkpoints", 100_000, 300, nudge=0.2)
    shutil.copytree(base / "chatsft_checkpoints", base / "chatrl_checkpoints")   # the RL phase's folder
    return base


def test_one_prompt(base):
    p = run_module("chat_cli", "-p", "Why is the sky blue?", "--max-tokens", "8", "-t", "1.0", "-k", "20", "--seed", "1",
                   "--device-type", "cpu", env=cli_env(base), timeout=120)
    assert p.stderr.startswith("loading sft model d2 step 0")                  # diagnostics on stderr...
    assert "loading" not in p.stdout and p.stdout.endswith("\n") and p.stdout.strip()   # ...the reply alone on stdout


def test_rl_phase(base, monkeypatch, capsys):
    from nanochat_nb.chat_cli import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    s = main.cli(["-i", "rl", "-p", "hi", "--max-tokens", "3", "--device-type", "cpu"])
    assert f"loading rl model d2 step 0 from {base / 'chatrl_checkpoints' / 'd2'}" in capsys.readouterr().err
    assert len(s.messages) == 2 and len(s.last.tokens) <= 3


def test_interactive_conversation(base):
    cmd = [sys.executable, "-m", "nanochat_nb.chat_cli", "--max-tokens", "4", "--device-type", "cpu"]
    p = subprocess.run(cmd, input="hello\n\nclear\nsecond question\n/help\n/temperature 0\n", env=cli_env(base),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("Assistant: ") == 2
    assert "(new conversation; 2 messages dropped)" in p.stdout and "/history" in p.stdout and "temperature 0.0" in p.stdout
    assert "Traceback" not in p.stderr


def test_reply_is_streamed_piece_by_piece(base, monkeypatch):
    from nanochat_nb.chat_cli import main, render_reply

    class Recorder(io.StringIO):
        def __init__(self): super().__init__(); self.writes, self.flushes = [], 0
        def write(self, s): self.writes.append(s); return super().write(s)
        def flush(self): self.flushes += 1

    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    s = main.cli(["-p", "hi", "--max-tokens", "6", "-t", "1.0", "--seed", "0", "--device-type", "cpu"])
    monkeypatch.undo()
    reply = s.messages[-1]["content"]
    assert "".join(rec.writes) == render_reply(reply) + "\n"                   # stdout: the reply and nothing else
    assert len([w for w in rec.writes if w.strip("\n")]) > 1 and rec.flushes >= len(rec.writes) - 1   # written as generated


def test_a_device_this_machine_lacks_is_one_line(base):
    dev = "gpu" if torch.cuda.is_available() else "cuda"
    p = run_module("chat_cli", "-p", "x", "--device-type", dev, env=cli_env(base), check=False, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1 and "Traceback" not in p.stderr, p.stderr
    assert err[0].startswith("error: --device-type"), err
    assert ("no CUDA GPU on this machine" in err[0] and "use --device-type cpu" in err[0]) if dev == "cuda" else "choose cuda" in err[0]


def test_help_lists_every_phase():
    from nanochat_nb.chat_cli import main
    assert "which model: base, mid, sft or rl" in " ".join(main.parser().format_help().split())


@pytest.mark.parametrize("args,msg", [(["-k", "-3"], "--top-k -3 must be >= 0"),
                                      (["--max-tokens", "0"], "--max-tokens 0 must be >= 1"),
                                      (["-t", "-1"], "--temperature -1.0 must be >= 0"),
                                      (["-i", "chat"], "-i/--source 'chat' is not a phase"),
                                      (["-i", "mid"], "no mid checkpoints in"),
                                      (["-i", "mid"], "python -m nanochat_nb.chat_sft --stage mid"),
                                      (["-g", "d7"], "-g/--model-tag d7: there is no such sft model"),
                                      (["-g", "d7"], "the tags there: d2"),
                                      (["-s", "5"], "-s/--step 5: sft model d2 has no complete checkpoint at that step; its steps: 0"),
                                      (["--device-type", "tpu"], "--device-type 'tpu' is not a device type")])
def test_bad_flags(base, monkeypatch, args, msg):
    from nanochat_nb.chat_cli import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        main.cli(["-p", "x", "--device-type", "cpu", *args])
    assert msg in str(e.value)


def test_missing_checkpoints(tmp_path, monkeypatch):
    from nanochat_nb.chat_cli import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no rl checkpoints in .*chatrl_checkpoints: train one first "
                                                r"\(python -m nanochat_nb.chat_rl"):
        main.cli(["-i", "rl", "-p", "x", "--device-type", "cpu"])


# ---- a real terminal ----

@pytest.fixture(scope="module")
def endless_base(tmp_path_factory):
    """A checkpoint whose replies never end by themselves: byte tokenizer, random d2 GPT whose output rows for the
    special tokens are zero, so with top-k 20 (and 255 byte tokens of random logits above and below zero) the model
    never samples <|assistant_end|> or <|bos|> and a reply runs to --max-tokens: long enough to press Ctrl-C in."""
    from nanochat_nb.checkpoint import save_checkpoint
    from nanochat_nb.gpt import GPTConfig, build_model
    from nanochat_nb.tokenizer import Tokenizer
    base = tmp_path_factory.mktemp("endless") / "base"
    tok = Tokenizer.from_merges([bytes([i]) for i in range(256)])
    tok.save(base / "tokenizer")
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=512, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64,
                    window_pattern="L")
    model = build_model(cfg, "cpu")
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
        model.lm_head.weight[256:] = 0                                         # the special tokens: logit 0, never top-20
    save_checkpoint(base / "chatsft_checkpoints" / "d2", 0, model.state_dict(), None,
                    dict(step=0, model_config=asdict(cfg), tokenizer_dir=str(base / "tokenizer")))
    return base


class Tmux:
    "One tmux server of our own (-L), one session running `cmd`, its screen read with capture-pane."
    def __init__(self, cmd: str, env: dict, tmp_path):
        self.sock, self.env = f"nanochat-test-{os.getpid()}-{time.monotonic_ns()}", env
        conf, self.status = tmp_path / "tmux.conf", tmp_path / "exit-status"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 5000\n")
        # the exit status goes to a file (tmux can be slow to notice that a pane's process has exited)
        self("-f", str(conf), "new-session", "-d", "-s", "chat", "-x", "160", "-y", "45", f"{cmd}; echo $? > {self.status}")

    def __call__(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], env=self.env, capture_output=True, text=True, timeout=20).stdout

    def keys(self, *keys): self("send-keys", "-t", "chat", *keys)
    def screen(self) -> str: return self("capture-pane", "-p", "-J", "-t", "chat", "-S", "-5000")

    def wait(self, ok, what: str, timeout: float = 60):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if ok(s := self.screen()): return s
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()[-3000:]}")

    def kill(self): self("kill-server")


@pytest.mark.skipif(not shutil.which("tmux"), reason="tmux is missing: apt-get install tmux")
def test_terminal_session_ctrl_c_history_and_exit(endless_base, tmp_path):
    cmd = f"{sys.executable} -m nanochat_nb.chat_cli --device-type cpu -k 20 -t 1.0 --max-tokens 4000 --seed 0"
    t = Tmux(cmd, cli_env(endless_base), tmp_path)
    try:
        last = lambda s: (s.rstrip().splitlines() or [""])[-1].rstrip()
        at_prompt = lambda s: last(s) == "User:"
        t.wait(at_prompt, "the first prompt")
        assert "/help for commands" in t.screen()
        t.keys("hello there", "Enter")
        t.wait(lambda s: len(s.split("Assistant: ", 1)[-1]) > 40 if "Assistant: " in s else False, "a reply streaming")
        t.keys("C-c")                                                          # Ctrl-C mid-reply
        s = t.wait(lambda s: "[stopped]" in s and at_prompt(s), "the reply to stop and the prompt to come back")
        assert "Traceback" not in s and "KeyboardInterrupt" not in s
        t.keys("Up")                                                           # history: the last line comes back
        t.wait(lambda s: last(s) == "User: hello there", "Up to recall the last line")
        t.keys("C-u", "/history", "Enter")                                     # the conversation kept the partial reply
        s = t.wait(lambda s: "User: /history" in s and s.count("User: hello there") >= 2 and at_prompt(s), "/history")
        history = s[s.rindex("/history"):]
        assert "User: hello there" in history and "Assistant: " in history.split("User: hello there", 1)[1]
        t.keys("and now?", "Enter")                                            # the chat goes on: a second reply...
        t.wait(lambda s: s.count("Assistant: ") >= 3 and len(s.rsplit("Assistant: ", 1)[1]) > 40, "a second reply")
        t.keys("C-c")                                                          # ...stopped too
        t.wait(lambda s: s.count("[stopped]") == 2 and at_prompt(s), "the second stop")
        t.keys("C-d")                                                          # Ctrl-D at the prompt ends the chat
        t.wait(lambda s: t.status.exists(), "the program to exit")
        time.sleep(0.2)
        assert t.status.read_text().strip() == "0"
        assert "Traceback" not in t.screen()
        lines = [l for l in t.screen().splitlines() if l.startswith("Assistant: ")]
        assert not any(re.search(r"<\|[a-z_]+\|>|\x1b", l) for l in lines)     # no raw special tokens, no escapes obeyed
    finally:
        t.kill()
