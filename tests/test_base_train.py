"""base_train as a user runs it: the CLI on the embedded corpus, its errors, --dry-run, exact resume, torchrun."""
import json, os, shutil, subprocess, sys, threading
from pathlib import Path
import pytest
import torch

from conftest import cli_env, run_module

TINY = ["--depth", "2", "--head-dim", "32", "--max-seq-len", "64", "--window-pattern", "L", "--device-batch-size", "4",
        "--total-batch-size", "512", "--warmup-steps", "2", "--sample-every", "-1", "--device-type", "cpu"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A base dir with a small embedded corpus and a tokenizer trained on it (made once for this module)."""
    base = tmp_path_factory.mktemp("base")
    env = cli_env(base)
    run_module("dataset", "--synthetic", "--chars", "3e6", "--shard-chars", "1e6", "-w", "1", env=env)
    run_module("tok_train", "--max-chars", "1e6", "--vocab-size", "512", env=env)
    return base, env


def _log(base, tag):
    return [json.loads(l) for l in open(base / "base_checkpoints" / tag / "log.jsonl")]


def test_missing_inputs_say_what_to_run(tmp_path, base_env):
    p = run_module("base_train", *TINY, "--num-iterations", "2", env=base_env, check=False)
    assert p.returncode == 1 and "python -m nanochat_nb.dataset --synthetic" in p.stderr and "Traceback" not in p.stderr
    run_module("dataset", "--synthetic", "--chars", "2e5", env=base_env)
    p = run_module("base_train", *TINY, "--num-iterations", "2", env=base_env, check=False)
    assert p.returncode == 1 and "python -m nanochat_nb.tok_train" in p.stderr


def test_bad_flags_fail_at_start(prepared):
    base, env = prepared
    p = run_module("base_train", *TINY, "--depth", "0", env=env, check=False)
    assert p.returncode == 1 and "--depth 0" in p.stderr
    p = run_module("base_train", *TINY, "--total-batch-size", "1000", env=env, check=False)
    assert p.returncode == 1 and "--total-batch-size 1,000 is not a multiple" in p.stderr
    p = run_module("base_train", *TINY, "--compile", "maybe", env=env, check=False)   # argparse checks the choices
    assert p.returncode == 2 and "--compile: invalid choice: 'maybe'" in p.stderr
    p = run_module("base_train", *TINY, "--device-type", "tpu", env=env, check=False)
    assert p.returncode == 2 and "invalid choice: 'tpu'" in p.stderr and "Traceback" not in p.stderr
    p = run_module("base_train", *TINY, "--device-batch-size", "0", env=env, check=False)
    assert p.returncode == 1 and p.stderr.strip() == "error: --device-batch-size 0: must be at least 1"
    if not torch.cuda.is_available():
        p = run_module("base_train", *TINY, "--device-type", "cuda", env=env, check=False)
        assert p.returncode == 1 and "Traceback" not in p.stderr and "--device-type cuda" in p.stderr
    (base / "a_file").write_text("not a folder")
    p = run_module("base_train", *TINY, "--base-dir", str(base / "a_file" / "inside"), env=env, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "--base-dir" in p.stderr and "is a file" in p.stderr

    p = run_module("base_train", *TINY, "--window-pattern", "SXL", env=env, check=False)
    assert p.returncode == 1 and "window_pattern" in p.stderr


def test_dry_run_prints_the_plan(prepared):
    base, env = prepared
    p = run_module("base_train", *TINY, "--num-iterations", "50", "--dry-run", env=env)
    out = p.stdout
    assert "model: d2, width 128" in out and "batch: 512 tokens = 4 rows x 64 x 1 rank(s) x 2 accumulation step(s); 50 iterations" in out
    assert "estimated training time" in out and "dry run, not training" in out
    assert not (base / "base_checkpoints" / "d2").exists()
    # underscored flags are accepted too
    p = run_module("base_train", *["--" + t[2:].replace("-", "_") if t.startswith("--") else t for t in TINY], "--num_iterations", "3", "--dry_run", env=env)
    assert "3 iterations" in p.stdout


def test_a_cpu_run_shows_progress_early_and_ctrl_c_says_how_to_resume(prepared):
    """With the default validation size, a CPU run prints a progress line for its first validation within 30 s, and
    Ctrl-C (SIGINT) ends it with one line naming the command that resumes, exit status 130, no traceback."""
    import signal, time
    base, env = prepared
    args = ["--depth", "2", "--num-iterations", "30", "--device-type", "cpu", "--sample-every", "-1", "--model-tag", "progress"]
    # a program run from a terminal gets Ctrl-C with its default meaning, whatever the test runner's own disposition is
    proc = subprocess.Popen([sys.executable, "-m", "nanochat_nb.base_train", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, out = [], []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")), daemon=True).start()   # never a full pipe
    t0 = time.time()
    try:
        while time.time() - t0 < 60 and not any("validation:" in l for l in lines): time.sleep(0.2)
        took = time.time() - t0
        proc.send_signal(signal.SIGINT)
        try: proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            state = Path(f"/proc/{proc.pid}/status").read_text() if Path(f"/proc/{proc.pid}/status").exists() else ""
            raise AssertionError(f"no exit 60 s after SIGINT (first validation after {took:.0f} s); "
                                 f"{' '.join(l for l in state.splitlines() if l.startswith(('State', 'SigIgn', 'SigCgt')))}\n"
                                 f"stderr: {''.join(lines)[-2000:]}\nstdout: {''.join(out)[-1000:]}") from None
        time.sleep(0.5)
    finally:
        if proc.poll() is None: proc.kill()
    seen = "".join(lines)
    assert "step 00000 validation:" in seen and took < 30, (took, seen)
    assert "eta" in seen
    assert proc.returncode == 130 and "Traceback" not in seen
    assert seen.strip().splitlines()[-1] == ("interrupted; to continue from the last checkpoint run: python -m nanochat_nb.base_train "
                                            + " ".join(args) + " --resume")


def test_training_and_exact_resume_via_cli(prepared):
    base, env = prepared
    run_module("base_train", *TINY, "--num-iterations", "8", "--save-every", "4", "--eval-every", "4",
               "--eval-tokens", "1024", "--model-tag", "straight", env=env)
    root = base / "base_checkpoints"
    (root / "resumed").mkdir()
    for f in (root / "straight").glob("*_000004*"): shutil.copy(f, root / "resumed" / f.name)
    with open(root / "resumed" / "log.jsonl", "w") as f:   # the log as it stood at step 4
        f.writelines(json.dumps(r) + "\n" for r in _log(base, "straight") if r["step"] < 4)
    p = run_module("base_train", *TINY, "--num-iterations", "8", "--eval-every", "4", "--eval-tokens", "1024",
                   "--model-tag", "resumed", "--resume", env=env)
    assert "resumed from" in p.stdout and "step 4" in p.stdout
    straight = [r["loss"] for r in _log(base, "straight") if "loss" in r]
    resumed = [r["loss"] for r in _log(base, "resumed") if "loss" in r]
    assert len(straight) == 8 and resumed == straight  # steps 0-3 copied, steps 4-7 recomputed identically
    a = torch.load(root / "straight" / "model_000008.pt"); b = torch.load(root / "resumed" / "model_000008.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((root / "straight" / "meta_000008.json").read_text())
    assert meta["model_config"]["n_layer"] == 2 and meta["step"] == 8 and len(meta["dataloader_state_dicts"]) == 1
    vals = [r["val_bpb"] for r in _log(base, "straight") if "val_bpb" in r]
    assert len(vals) == 3 and vals[-1] < vals[0]


def test_fp8_flag_is_ignored_with_a_warning_off_hopper(prepared):
    base, env = prepared
    p = run_module("base_train", *TINY, "--num-iterations", "2", "--eval-every", "-1", "--eval-tokens", "512",
                   "--fp8", "--fp8-recipe", "rowwise", "--model-tag", "fp8", env=env)
    assert "--fp8 needs a CUDA GPU of compute capability 8.9+" in p.stderr
    assert (base / "base_checkpoints" / "fp8" / "model_000002.pt").exists()


def test_torchrun_two_ranks_then_resume(prepared):
    base, env = prepared
    torchrun = shutil.which("torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "nanochat_nb.base_train", *TINY, "--total-batch-size", "1024",
           "--num-iterations", "4", "--eval-every", "2", "--eval-tokens", "1024", "--model-tag", "ddp"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 rank(s) x 2 accumulation step(s)" in p.stdout and p.stdout.count("saved checkpoint step 4") == 1
    d = base / "base_checkpoints" / "ddp"
    assert (d / "optim_000004_rank0.pt").exists() and (d / "optim_000004_rank1.pt").exists()
    meta = json.loads((d / "meta_000004.json").read_text())
    states = meta["dataloader_state_dicts"]
    assert len(states) == 2 and states[0]["buffer"] and states[1]["buffer"]
    assert {k[2] % 2 for k in states[0]["buffer"]} == {0} and {k[2] % 2 for k in states[1]["buffer"]} == {1}  # rank row groups
    # one process cannot take over a 2-rank optimizer shard: a clear error, or --reset-optimizer
    more = [*TINY, "--total-batch-size", "1024", "--num-iterations", "6", "--eval-every", "-1", "--eval-tokens", "512", "--model-tag", "ddp"]
    p = run_module("base_train", *more, "--resume", env=env, check=False)
    assert p.returncode == 1 and "--reset-optimizer" in p.stderr and "Traceback" not in p.stderr
    p = run_module("base_train", *more, "--resume", "--reset-optimizer", env=env)
    assert "resumed from" in p.stdout and (d / "model_000006.pt").exists()


def test_nanochat_style_checkpoint_continues(prepared):
    """A checkpoint as nanochat writes it (compiled-model key prefixes, bf16 weights, a {pq_idx, rg_idx, epoch} loader
    state, an optimizer file of another implementation) loads and keeps training."""
    base, env = prepared
    run_module("base_train", *TINY, "--num-iterations", "3", "--eval-every", "-1", "--eval-tokens", "512", "--model-tag", "ours", env=env)
    root = base / "base_checkpoints"
    src, dst = root / "ours", root / "d2"
    dst.mkdir()
    sd = torch.load(src / "model_000003.pt")
    torch.save({"_orig_mod." + k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}, dst / "model_000003.pt")
    meta = json.loads((src / "meta_000003.json").read_text())
    loader = meta["dataloader_state_dict"]
    meta = {"step": 3, "val_bpb": meta["val_bpb"], "model_config": meta["model_config"], "user_config": meta["user_config"],
            "device_batch_size": 4, "max_seq_len": 64,
            "dataloader_state_dict": {k: loader[k] for k in ("pq_idx", "rg_idx", "epoch")},
            "loop_state": {"min_val_bpb": 9.9, "smooth_train_loss": 5.0, "total_training_time": 1.0}}
    (dst / "meta_000003.json").write_text(json.dumps(meta))
    torch.save({"state": {}, "param_groups": [{"params": [0], "lr": 0.1}]}, dst / "optim_000003_rank0.pt")   # not ours
    more = [*TINY, "--num-iterations", "6", "--eval-every", "-1", "--eval-tokens", "512"]
    p = run_module("base_train", *more, "--resume", env=env, check=False)          # the optimizer state does not fit
    assert p.returncode == 1 and "--reset-optimizer" in p.stderr
    p = run_module("base_train", *more, "--resume", "--reset-optimizer", env=env)  # default tag d2
    assert "resumed from" in p.stdout and "step 3" in p.stdout
    losses = [r["loss"] for r in _log(base, "d2") if "loss" in r]
    assert len(losses) == 3 and all(l == l and l < 20 for l in losses)             # steps 3-5 trained, finite losses
    assert (dst / "model_000006.pt").exists()
