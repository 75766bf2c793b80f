"""Every console script as a shell runs it: exit status 0 on success with nothing dumped after the output, 1 for a
user's mistake (one line, no traceback), 2 for a malformed command line; and `a && b` chains work."""
import configparser, shutil, subprocess
from pathlib import Path
import pytest

from conftest import cli_env, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> dict:
    "{script name: 'module:function'} from settings.ini, the file setup.py builds the entry points from."
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    entries = cfg["DEFAULT"]["console_scripts"].split()
    return dict(e.split("=", 1) for e in entries)


def run(cmd, env, timeout=300, input=None):
    exe = shutil.which(cmd[0])
    assert exe, f"{cmd[0]} is not installed: pip install -e . creates it"
    return subprocess.run([exe, *cmd[1:]], env=env, capture_output=True, text=True, timeout=timeout, input=input)


def assert_clean_success(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-2000:]}\nstderr:\n{p.stderr[-2000:]}"
    for stream in (p.stdout, p.stderr):
        assert " object at 0x" not in stream and "Traceback" not in stream, stream[-2000:]


def test_every_console_script_is_installed_and_helps():
    scripts = console_scripts()
    assert len(scripts) >= 12
    env = cli_env(Path("/nonexistent-base-dir-for-help"))
    for name in scripts:
        p = run([name, "--help"], env, timeout=120)
        assert_clean_success(p)
        assert p.stdout.startswith(f"usage: {name}"), (name, p.stdout[:200])   # the name the user typed
        assert "(default: None)" not in p.stdout and "default: 50000000.0" not in p.stdout


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("scripts") / "base"
    tiny_checkpoint(base, "chatsft_checkpoints", 100_000, 300, nudge=0.2)
    return base


def test_a_shell_chain_of_the_pipeline_scripts(tmp_path):
    env = cli_env(tmp_path / "base")
    chain = ("nanochat-dataset --synthetic --chars 3e5 --shard-chars 1e5 -w 1 && "
             "nanochat-tok-train --max-chars 2e5 --vocab-size 400 --num-workers 1 && "
             "nanochat-tok-eval --no-references --shard-chars 20000 && "
             "nanochat-base-train --depth 1 --head-dim 32 --max-seq-len 64 --window-pattern L --device-batch-size 4 "
             "--total-batch-size 256 --num-iterations 2 --eval-tokens 256 --sample-every -1 --device-type cpu && "
             "nanochat-speedrun --dry-run --preset d24 --gpus 8 --gpu-name H100 && "
             "echo CHAIN-OK")
    p = subprocess.run(["bash", "-c", chain], env=env, capture_output=True, text=True, timeout=600)
    assert_clean_success(p)
    assert p.stdout.rstrip().endswith("CHAIN-OK")
    assert (tmp_path / "base" / "base_checkpoints" / "d1" / "model_000002.pt").exists()


def test_chat_scripts_succeed_quietly(base):
    env = cli_env(base)
    p = run(["nanochat-chat-cli", "-p", "hi", "--max-tokens", "4", "--device-type", "cpu"], env, timeout=120)
    assert_clean_success(p)
    p = run(["nanochat-bench"], env, timeout=120)
    assert_clean_success(p)
    assert "benchmarks:" in p.stdout


def test_mistakes_exit_with_one_line(tmp_path):
    env = cli_env(tmp_path / "base")
    p = run(["nanochat-base-train", "--depth", "0"], env, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = run(["nanochat-base-train", "--device-type", "gpu"], env, timeout=120)
    assert p.returncode == 2 and "invalid choice: 'gpu'" in p.stderr
    p = run(["nanochat-tok-train", "--vocab-size", "100"], env, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("error: --vocab-size 100 is too small")
    p = run(["nanochat-bench", "no-such-benchmark"], env, timeout=120)
    assert p.returncode == 2 and "unknown benchmark" in p.stderr
