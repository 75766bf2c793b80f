"""`python -m nanochat_nb.chat_cli` as a user runs it: one prompt, a piped conversation, each phase (-i sft / rl / base),
replies written piece by piece as they are generated, and clear errors for bad flags and missing checkpoints."""
import io, shutil, subprocess, sys
import pytest

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
    assert "loading sft model d2 step 0" in p.stdout
    reply = p.stdout.split("\n", 1)[1]
    assert reply.endswith("\n") and len(reply.strip()) > 0


def test_rl_phase(base, monkeypatch, capsys):
    from nanochat_nb.chat_cli import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    s = main.cli(["-i", "rl", "-p", "hi", "--max-tokens", "3", "--device-type", "cpu"])
    assert f"loading rl model d2 step 0 from {base / 'chatrl_checkpoints' / 'd2'}" in capsys.readouterr().out
    assert len(s.messages) == 2 and len(s.last.tokens) <= 3


def test_interactive_conversation(base):
    cmd = [sys.executable, "-m", "nanochat_nb.chat_cli", "--max-tokens", "4", "--device-type", "cpu"]
    p = subprocess.run(cmd, input="hello\n\nclear\nsecond question\n", env=cli_env(base),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("Assistant: ") == 2
    assert "(new conversation)" in p.stdout


def test_reply_is_streamed_piece_by_piece(base, monkeypatch):
    from nanochat_nb.chat_cli import main

    class Recorder(io.StringIO):
        def __init__(self): super().__init__(); self.writes, self.flushes = [], 0
        def write(self, s): self.writes.append(s); return super().write(s)
        def flush(self): self.flushes += 1

    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    s = main.cli(["-p", "hi", "--max-tokens", "6", "-t", "1.0", "--seed", "0", "--device-type", "cpu"])
    monkeypatch.undo()
    pieces = rec.writes[rec.writes.index("loading sft model d2 step 0 from " + str(base / "chatsft_checkpoints" / "d2")) + 1:]
    reply = s.messages[-1]["content"]
    assert "".join(pieces).strip("\n") == reply
    assert len([w for w in pieces if w.strip("\n")]) > 1 and rec.flushes >= len(pieces) - 1   # written as generated


def test_bad_flag_is_one_line(base):
    p = run_module("chat_cli", "-p", "x", "-t", "-1", "--device-type", "cpu", env=cli_env(base), check=False, timeout=120)
    assert p.returncode == 1 and "error: --temperature -1.0 must be >= 0" in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("args,msg", [(["-k", "-3"], "--top-k -3 must be >= 0"),
                                      (["--max-tokens", "0"], "--max-tokens 0 must be >= 1"),
                                      (["-i", "chat"], "-i/--source 'chat' is not a phase"),
                                      (["-g", "d7"], "d7"),
                                      (["-s", "5"], "checkpoint step 5")])
def test_bad_flags(base, monkeypatch, args, msg):
    from nanochat_nb.chat_cli import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base))
    with pytest.raises((ValueError, FileNotFoundError), match=None) as e:
        main.cli(["-p", "x", "--device-type", "cpu", *args])
    assert msg in str(e.value)


def test_missing_checkpoints(tmp_path, monkeypatch):
    from nanochat_nb.chat_cli import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no model tags in .*chatrl_checkpoints"):
        main.cli(["-i", "rl", "-p", "x", "--device-type", "cpu"])
