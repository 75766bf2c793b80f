"""chat_sft as a user runs it: errors that say what to do, SFT and midtraining through the CLI, one pass over the
mixture, exact resume, and torchrun with two processes."""
import json, os, shutil, subprocess
import pytest
import torch

from conftest import run_module

BASE = ["--depth", "2", "--head-dim", "32", "--max-seq-len", "128", "--window-pattern", "L", "--device-batch-size", "4",
        "--total-batch-size", "512", "--warmup-steps", "2", "--sample-every", "-1", "--eval-every", "-1",
        "--eval-tokens", "512", "--device-type", "cpu", "--num-iterations", "10"]
SFT = ["--mixture", "synthetic", "--arith-size", "200", "--identity-epochs", "1", "--eval-steps", "1", "--device-type", "cpu"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A base dir with the embedded corpus, a tokenizer and a tiny pretrained d2 (made once for this module)."""
    base = tmp_path_factory.mktemp("base")
    env = {k: v for k, v in os.environ.items() if k not in ("NANOCHAT_DATA_DIR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(NANOCHAT_BASE_DIR=str(base), OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    run_module("dataset", "--synthetic", "--chars", "2e6", "--shard-chars", "1e6", "-w", "1", env=env)
    run_module("tok_train", "--max-chars", "1e6", "--vocab-size", "512", env=env)
    run_module("base_train", *BASE, env=env)
    return base, env


def _log(d):
    return [json.loads(l) for l in open(d / "log.jsonl")]


def test_missing_base_checkpoint_says_what_to_run(base_env):
    p = run_module("chat_sft", *SFT, env=base_env, check=False)
    assert p.returncode == 1 and "python -m nanochat_nb.base_train" in p.stderr and "Traceback" not in p.stderr
    p = run_module("chat_sft", *SFT, "--source", "mid", env=base_env, check=False)
    assert p.returncode == 1 and "chat_sft --stage mid" in p.stderr


def test_bad_flags_fail_at_start(prepared):
    base, env = prepared
    for flags, msg in [(["--stage", "rl"], "--stage 'rl'"), (["--mixture", "tiny"], "--mixture 'tiny'"),
                       (["--mmlu-epochs", "-2"], "--mmlu-epochs -2"), (["--init-lr-frac", "0"], "--init-lr-frac 0"),
                       (["--total-batch-size", "1000"], "--total-batch-size 1,000 is not a multiple")]:
        p = run_module("chat_sft", *SFT, *flags, env=env, check=False)
        assert p.returncode == 1 and msg in p.stderr and "Traceback" not in p.stderr, (flags, p.stderr[-500:])


def test_sft_inherits_warm_starts_and_resumes_exactly(prepared):
    base, env = prepared
    root = base / "chatsft_checkpoints"
    p = run_module("chat_sft", *SFT, "--num-iterations", "6", "--save-every", "3", "--eval-every", "3",
                   "--output-tag", "straight", env=env)
    assert "warm-started the optimizer from" in p.stdout
    assert "batch 512 tokens = 4 rows x 128 x 1 rank(s) x 1 accumulation step(s)" in p.stdout   # inherited from base
    meta = json.loads((root / "straight" / "meta_000006.json").read_text())
    assert meta["stage"] == "sft" and meta["source"]["phase"] == "base" and meta["device_batch_size"] == 4
    base_meta = json.loads((base / "base_checkpoints" / "d2" / "meta_000010.json").read_text())
    assert abs(meta["learning_rates"]["matrix_lr"] - 0.02 * (512 / 2 ** 19) ** 0.5) < 1e-12
    assert base_meta["total_batch_size"] == meta["total_batch_size"] == 512
    (root / "resumed").mkdir()
    for f in (root / "straight").glob("*_000003*"): shutil.copy(f, root / "resumed" / f.name)
    with open(root / "resumed" / "log.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _log(root / "straight") if r["step"] < 3)
    p = run_module("chat_sft", *SFT, "--num-iterations", "6", "--eval-every", "3", "--output-tag", "resumed", "--resume", env=env)
    assert "resumed from" in p.stdout
    straight = [r["loss"] for r in _log(root / "straight") if "loss" in r]
    resumed = [r["loss"] for r in _log(root / "resumed") if "loss" in r]
    assert len(straight) == 6 and resumed == straight
    a = torch.load(root / "straight" / "model_000006.pt"); b = torch.load(root / "resumed" / "model_000006.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the learning rate: 0.8 of the inherited rate, flat for half the run, then down to 0
    lrms = [r["lrm"] for r in _log(root / "straight") if "lrm" in r]
    assert lrms[:3] == [1.0, 1.0, 1.0] and lrms[3] > lrms[4] > lrms[5] >= 0
    # --reset-optimizer starts it fresh, and says so
    p = run_module("chat_sft", *SFT, "--num-iterations", "1", "--output-tag", "fresh", "--reset-optimizer", env=env)
    assert "--reset-optimizer" in p.stdout and "warm-started" not in p.stdout


def test_one_pass_over_the_mixture(prepared):
    base, env = prepared
    run_module("chat_sft", "--mixture", "synthetic", "--arith-size", "40", "--eval-steps", "1", "--device-type", "cpu",
               "--buffer-size", "8", "--output-tag", "onepass", env=env)
    log = _log(base / "chatsft_checkpoints" / "onepass")
    prog = [r["progress"] for r in log if "progress" in r]
    assert prog[-1] >= 1 and all(x < 1 for x in prog[:-1]) and prog == sorted(prog)
    assert [r["lrm"] for r in log if "lrm" in r][-1] < 0.2     # the warmdown reached (nearly) zero at the end


def test_midtraining_then_sft(prepared):
    base, env = prepared
    p = run_module("chat_sft", "--stage", "mid", "--mixture", "synthetic", "--arith-size", "100", "--spelling-size", "50",
                   "--identity-epochs", "1", "--num-iterations", "3", "--eval-steps", "1", "--device-type", "cpu", env=env)
    assert (base / "mid_checkpoints" / "d2" / "model_000003.pt").exists()
    p = run_module("chat_sft", *SFT, "--source", "mid", "--num-iterations", "2", "--output-tag", "from_mid", env=env)
    assert "mid model d2 step 3" in p.stdout and "warm-started" in p.stdout
    meta = json.loads((base / "chatsft_checkpoints" / "from_mid" / "meta_000002.json").read_text())
    assert meta["source"] == {"phase": "mid", "model_tag": "d2", "step": 3}


def test_torchrun_two_ranks(prepared):
    base, env = prepared
    torchrun = shutil.which("torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "nanochat_nb.chat_sft", *SFT, "--num-iterations", "3",
           "--device-batch-size", "2", "--output-tag", "ddp"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "written by 1 rank(s), this run has 2" in p.stdout                     # no warm start across world sizes
    assert "2 rows x 128 x 2 rank(s) x 1 accumulation step(s)" in p.stdout
    d = base / "chatsft_checkpoints" / "ddp"
    assert (d / "optim_000003_rank0.pt").exists() and (d / "optim_000003_rank1.pt").exists()
    states = json.loads((d / "meta_000003.json").read_text())["dataloader_state_dicts"]
    assert len(states) == 2 and {k % 2 for k in states[0]["buffer"]} == {0} and {k % 2 for k in states[1]["buffer"]} == {1}
