"""The speedrun as a user runs it: the whole pipeline at the `tiny` preset (every stage's artifact and the report), a
second invocation that skips everything, a changed flag that re-runs one stage and the report, an interrupted
pretraining that resumes from its checkpoint, the d24 dry run on 8xH100 against REFERENCE §4/§9, multi-node
commands, and clear errors for bad flags."""
import importlib.util, json, re, shutil
from pathlib import Path
import pytest

from conftest import cli_env, run_module

STAGES = ["data", "tok_train", "tok_eval", "base_train", "base_eval", "mid_train", "chat_sft", "chat_eval", "chat_rl",
          "rl_eval", "report"]
HAVE_RL = importlib.util.find_spec("nanochat_nb.chat_rl") is not None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("speedrun") / "base"
    env = cli_env(base)
    p = run_module("speedrun", "--preset", "tiny", "--base-dir", base, env=env, timeout=600)
    return base, env, p


def _marker(base, name):
    return json.loads((base / "speedrun" / f"{name}.json").read_text())


def test_every_stage_leaves_its_artifact(tiny_run):
    base, env, p = tiny_run
    ran = [s for s in STAGES if HAVE_RL or s not in ("chat_rl", "rl_eval")]
    for s in ran:
        m = _marker(base, s)
        assert m["seconds"] >= 0 and m["stage"] == s, s
        if s != "report": assert (base / "speedrun" / "logs" / f"{s}.log").stat().st_size > 0, s
    assert len(list((base / "base_data").glob("shard_*.parquet"))) >= 2
    assert (base / "tokenizer" / "tokenizer.pkl").is_file() and (base / "tokenizer" / "token_bytes.pt").is_file()
    assert (base / "base_checkpoints" / "d2" / "model_000012.pt").is_file()
    be = json.loads(next((base / "base_eval").glob("d2_*.json")).read_text())
    assert be["core"]["num_tasks"] == 3 and 0 < be["bpb"]["val"] < 10
    assert list((base / "mid_checkpoints" / "d2").glob("model_*.pt")) and list((base / "chatsft_checkpoints" / "d2").glob("model_*.pt"))
    for src in ("mid", "sft"):
        r = json.loads(next((base / "chat_eval").glob(f"{src}_d2_*.json")).read_text())
        assert r["tasks"]["CPUChat"]["total"] == 10 and len(r["tasks"]["CPUChat"]["skills"]) == 5
    if HAVE_RL:
        rl = sorted((base / "chatrl_checkpoints" / "d2").glob("meta_*.json"))[-1]
        assert json.loads(rl.read_text())["history"]
        assert next((base / "chat_eval").glob("rl_d2_*.json"))
    assert _marker(base, "base_train")["figures"]["step"] == 12
    assert "chat_cli -i " in p.stdout and "chat_web -i " in p.stdout and "nanochat_nb.export -i " in p.stdout


def test_report_has_every_section_and_image(tiny_run):
    base, env, p = tiny_run
    md = (base / "report" / "report.md").read_text()
    for section in ("## Hardware and software", "## Time and cost per stage", "## Tokenizer", "## Model",
                    "## Base model evaluation", "## Chat evaluation", "## The CPU exam", "## Curves",
                    "### Replies of the "):
        assert section in md, section
    assert "CORE: **" in md and "bytes/token" in md and "FLOPs per token" in md
    assert re.search(r"\| CPUChat \| [0-9.]+ \| [0-9.]+ \|", md)                     # mid and sft side by side
    assert re.search(r"\| letters \| \d+% \| \d+% \|", md) and "exam.png" in md          # the exam per skill and stage
    assert md.count(", right:") + md.count(", wrong:") == 10                           # graded replies from the exam
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (base / "report" / img).stat().st_size > 1000, img
    assert "base_loss.png" in md and "chat_loss.png" in md
    if HAVE_RL:
        assert "rl_reward.png" in md and "## Reinforcement learning" in md
        assert re.search(r"held-out pass@1 [\d.]+ → [\d.]+ and pass@4 [\d.]+ → [\d.]+ \(steps 0 → 2\)", md), md
    for s in ("base_train", "chat_sft", "chat_eval"): assert f"| {s} | " in md
    assert "## Share it" in md and "python -m nanochat_nb.export -i " in md
    assert "| stage | time | estimated | time / estimate | cost |" in md


def test_report_judges_the_run_and_shows_the_command_as_typed(tiny_run):
    """The verdict comes first (the tiny preset has no measured ranges, so it says so, while RL's cost to each skill is
    still judged); the command line is the one that ran, with no trailing space; the run records its seed and load."""
    base, env, p = tiny_run
    md = (base / "report" / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Time and cost per stage")
    assert "No expected range for the tiny preset: its numbers are not judged against seeds." in md
    if HAVE_RL: assert re.search(r"\| RL keeps letters \| [+-][\d.]+ points \| ≥ -5 points \| (as|worse than) expected \|", md), md
    cmd = re.search(r"^Command: `([^`]*)`$", md, re.M).group(1)
    assert cmd == f"python -m nanochat_nb.speedrun --preset tiny --base-dir {base}", cmd
    run = json.loads((base / "speedrun" / "run.json").read_text())
    assert run["seed"] == 42 and run["load"] >= 0 and run["cpus"] >= 1 and ", seed 42, written" in md


def test_seed_reaches_every_training_stage(tmp_path):
    p = run_module("speedrun", "--preset", "cpu", "--dry-run", "--seed", "7", "--base-dir", tmp_path)
    assert p.returncode == 0, p.stderr
    rows = {l.split("|")[1].strip(): l for l in p.stdout.splitlines() if l.startswith("| ") and "`" in l}
    assert {s for s, l in rows.items() if "--seed 7" in l} == {"base_train", "mid_train", "chat_sft", "chat_rl"}, rows.keys()
    assert f"base dir: {tmp_path}, seed 7" in p.stdout


def test_second_run_skips_every_stage(tiny_run):
    base, env, _ = tiny_run
    before = {s: _marker(base, s)["finished"] for s in STAGES if (base / "speedrun" / f"{s}.json").exists()}
    p = run_module("speedrun", "--preset", "tiny", "--base-dir", base, env=env, timeout=300)
    assert p.stdout.count("done already") == len(before), p.stdout
    assert {s: _marker(base, s)["finished"] for s in before} == before


def test_changed_flag_reruns_that_stage_and_the_report(tiny_run):
    base, env, _ = tiny_run
    before = _marker(base, "base_train")["finished"]
    p = run_module("speedrun", "--preset", "tiny", "--base-dir", base, "--only", "base_eval,report", "--quiet",
                   "--base-eval-args", "--max-per-task 3", env=env, timeout=300)
    assert "[base_eval] its inputs or flags changed" in p.stdout and "[report] written to" in p.stdout
    assert "[base_train]" not in p.stdout and _marker(base, "base_train")["finished"] == before
    assert "--max-per-task 3" in _marker(base, "base_eval")["commands"][0]


def test_interrupted_pretraining_resumes_from_its_checkpoint(tiny_run, tmp_path):
    base, env, _ = tiny_run
    own = tmp_path / "base"
    shutil.copytree(base, own)
    # as if killed after the step-6 checkpoint: no final checkpoint, no done-marker
    for f in (own / "base_checkpoints" / "d2").glob("*_000012*"): f.unlink()
    (own / "speedrun" / "base_train.json").unlink()
    import subprocess, sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    tmpf = own / "base_checkpoints" / "d2" / f"model_000012.pt.tmp.{dead}.7"
    tmpf.write_bytes(b"the start of a checkpoint")                       # killed while writing step 12
    p = run_module("speedrun", "--preset", "tiny", "--only", "base_train", "--base-dir", own, env=cli_env(own), timeout=300)
    assert "resumed from" in p.stdout and "step 6" in p.stdout, p.stdout[-3000:]
    assert (own / "base_checkpoints" / "d2" / "model_000012.pt").is_file() and _marker(own, "base_train")["figures"]["step"] == 12
    assert not tmpf.exists() and f"removed {tmpf.name}" in p.stdout
    recs = [json.loads(l) for l in (own / "base_checkpoints" / "d2" / "log.jsonl").read_text().splitlines() if l.strip()]
    kinds = [(r["step"], tuple(sorted(r))) for r in recs]                  # a step may have a train and a val record
    assert len(kinds) == len(set(kinds)) and max(r["step"] for r in recs) >= 11, kinds


def test_dry_run_d24_on_8_h100_matches_reference(tmp_path):
    p = run_module("speedrun", "--dry-run", "--gpus", "8", "--gpu-name", "H100", "--base-dir", tmp_path, env=cli_env(tmp_path))
    out = p.stdout
    assert "speedrun preset d24" in out and "1 node(s) x 8 x H100" in out                     # the default with GPUs
    assert "(8 per scaling parameter)" in out and "batch 1,048,576 tokens x 5,568 steps (4 accumulation step(s))" in out
    assert "729.8M scaling" in out and ", fp8" in out
    row = next(l for l in out.splitlines() if l.startswith("| base_train |"))
    h, m = map(int, re.search(r"\| (\d+)h(\d\d)m \|", row).groups())
    assert 1.5 <= h + m / 60 <= 1.9, row                                                      # REFERENCE §9: 1.65 h
    assert "torchrun --nproc_per_node=8 --standalone -m nanochat_nb.base_train --depth 24" in row and "--fp8" in row
    assert "--target-param-data-ratio 8" in row and "--device-batch-size 16" in row
    cost = float(re.search(r"for the selected stages \(\$([0-9.,]+)\)", out).group(1).replace(",", ""))
    assert 40 <= cost <= 60, cost                                                              # REFERENCE §9: ~$48
    shards = int(re.findall(r"dataset -n (\d+)`", out)[-1])                                   # data_rest: all of them
    assert abs(shards - 170) <= 5                                                              # REFERENCE §5: ~170 shards
    assert not list(tmp_path.glob("base_data/*")) and not (tmp_path / "speedrun" / "run.json").exists()  # nothing ran


def test_dry_run_d20_multinode(tmp_path, capsys):
    from nanochat_nb.speedrun import main
    r = main.cli(["--dry-run", "--preset", "d20", "--gpus", "8", "--gpu-name", "A100", "--nnodes", "2", "--node-rank", "1",
                  "--master-addr", "10.0.0.5", "--base-dir", str(tmp_path)])
    out = capsys.readouterr().out
    row = next(l for l in out.splitlines() if l.startswith("| base_train |"))
    assert "--nproc_per_node=8 --nnodes=2 --node_rank=1 --master_addr=10.0.0.5 --master_port=29500" in row
    assert "--fp8" not in row and "2 node(s) x 8 x A100" in out and r["plan"]["depth"] == 20
    assert "| mid_train | todo |" in out and "| report | not selected |" in out and "| data | not selected |" in out  # node 0 does those


def test_bad_flag_is_one_line_error(tmp_path):
    p = run_module("speedrun", "--preset", "d30", "--base-dir", tmp_path, env=cli_env(tmp_path), check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "--preset 'd30': choose one of d24, d20, d26, cpu, tiny" in p.stderr


@pytest.mark.parametrize("args,msg", [
    (["--preset", "tiny", "--only", "base_trian"], "unknown stage"),
    (["--preset", "tiny", "--only", "report", "--from-stage", "data"], "conflict"),
    (["--preset", "tiny", "--only", "data_rest"], "off in this run"),
    (["--preset", "tiny", "--mid", "maybe"], "--mid 'maybe'"),
    (["--preset", "tiny", "--nnodes", "2", "--node-rank", "2"], "--node-rank 2"),
    (["--preset", "d24"], "needs CUDA GPUs"),
    (["--gpus", "8"], "--gpus 8 but torch sees"),
])
def test_bad_flags_fail_clearly(tmp_path, args, msg):
    import torch
    from nanochat_nb.speedrun import main
    if torch.cuda.is_available() and msg in ("needs CUDA GPUs", "--gpus 8 but torch sees"): pytest.skip("this machine has GPUs")
    with pytest.raises(ValueError, match=re.escape(msg)): main.cli([*args, "--base-dir", str(tmp_path)])
    assert not (tmp_path / "speedrun" / "run.json").exists()


# --- integrity: a rerun checks what it skips, and a corrupt file is named, never trusted ---------------------------------

def _flip(path, at=0.5):
    b = bytearray(path.read_bytes()); i = int(len(b) * at); b[i] ^= 0xFF; path.write_bytes(bytes(b))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _dead_pid():
    import subprocess, sys
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()


def _steps(log):
    "(step, fields) of each record: a step may have a train and a val record, but never the same one twice."
    return [(r["step"], tuple(sorted(r))) for r in map(json.loads, log.read_text().splitlines()) if r]


def test_markers_record_size_and_sha256_of_every_artifact(tiny_run):
    import hashlib
    base, _, _ = tiny_run
    files = _marker(base, "base_train")["files"]
    assert {"base_checkpoints/d2/model_000012.pt", "base_checkpoints/d2/meta_000012.json", "base_checkpoints/d2/model_000006.pt"} <= set(files)
    rec = files["base_checkpoints/d2/model_000012.pt"]
    assert rec["sha256"] == hashlib.sha256((base / "base_checkpoints/d2/model_000012.pt").read_bytes()).hexdigest()
    meta = json.loads((base / "base_checkpoints/d2/meta_000012.json").read_text())
    assert meta["files"]["model_000012.pt"] == rec and "optim_000012_rank0.pt" in meta["files"]
    for stage, f in (("data", "base_data/shard_00000.parquet"), ("tok_train", "tokenizer/tokenizer.pkl"), ("report", "report/report.md"),
                     ("chat_sft", "chatsft_checkpoints/d2/meta_000004.json")):
        assert f in _marker(base, stage)["files"], (stage, _marker(base, stage)["files"].keys())


def test_corrupt_sft_checkpoint_is_named_and_its_stage_redone(tiny_run, tmp_path):
    base, _, _ = tiny_run
    own = tmp_path / "base"; shutil.copytree(base, own); env = cli_env(own)
    sft = sorted((own / "chatsft_checkpoints" / "d2").glob("model_*.pt"))[-1]
    _flip(sft)
    p = run_module("speedrun", "--preset", "tiny", "--only", "chat_eval", "--force", "--base-dir", own, env=env, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr
    assert f"{sft} is changed: its sha256 differs" in p.stdout + p.stderr and "--from-stage chat_sft --force" in p.stdout + p.stderr
    # a plain plan sees it; chat_sft runs again (resuming never loads the bad file), and what follows it is stale
    dead = own / "chatsft_checkpoints" / "d2" / f"{sft.name}.tmp.{_dead_pid()}.1"
    dead.write_bytes(b"half a checkpoint")                                    # as if killed while writing
    p = run_module("speedrun", "--preset", "tiny", "--only", "chat_sft", "--quiet", "--base-dir", own, env=env)
    assert f"[chat_sft] chatsft_checkpoints/d2/{sft.name} is changed: its sha256 differs from the one recorded: removing it" in p.stdout, p.stdout
    assert "[chat_sft] finished" in p.stdout and not dead.exists()
    assert _marker(own, "chat_sft")["files"][f"chatsft_checkpoints/d2/{sft.name}"]["size"] == sft.stat().st_size
    steps = _steps(own / "chatsft_checkpoints" / "d2" / "log.jsonl")
    assert len(steps) == len(set(steps)), steps                               # the rerun's log has no duplicate steps
    p = run_module("speedrun", "--preset", "tiny", "--dry-run", "--base-dir", own, env=env)
    for s, status in (("chat_sft", "done"), ("chat_eval", "changed"), ("mid_train", "done"), ("base_train", "done")):
        assert f"| {s} | {status} |" in p.stdout, (s, p.stdout)


def test_corrupt_report_and_unreadable_markers_rerun_only_their_stages(tiny_run, tmp_path):
    base, _, _ = tiny_run
    own = tmp_path / "base"; shutil.copytree(base, own); env = cli_env(own)
    _flip(own / "report" / "report.md")
    (own / "speedrun" / "tok_eval.json").write_bytes(b"\xff\xfe" + (own / "speedrun" / "tok_eval.json").read_bytes())
    (own / "speedrun" / "base_eval.json").unlink(); (own / "speedrun" / "base_eval.json").mkdir()
    p = run_module("speedrun", "--preset", "tiny", "--quiet", "--base-dir", own, env=env)
    out = p.stdout
    assert "Traceback" not in out + p.stderr
    assert "[tok_eval] its done-marker" in out and "tok_eval.json does not parse (UnicodeDecodeError): counted as absent" in out
    assert "base_eval.json is not a file: counted as absent" in out
    assert "[report] report/report.md is changed: its sha256 differs" in out, out
    # (chat_eval and rl_eval name the base dir in their commands, so in a copied base dir they run again anyway)
    for s in ("data", "tok_train", "base_train", "mid_train", "chat_sft") + (("chat_rl",) if HAVE_RL else ()):
        assert f"[{s}] done already" in out, s
    for s in ("tok_eval", "base_eval", "report"): assert f"[{s}] finished" in out, s
    assert _marker(own, "base_eval")["stage"] == "base_eval"


def test_truncated_inputs_are_named_on_load_and_redone(tiny_run, tmp_path):
    base, _, _ = tiny_run
    own = tmp_path / "base"; shutil.copytree(base, own); env = cli_env(own)
    shard = sorted((own / "base_data").glob("shard_*.parquet"))[0]
    for f in (shard, own / "tokenizer" / "tokenizer.pkl", own / "base_checkpoints" / "d2" / "meta_000012.json"): _truncate(f)
    p = run_module("speedrun", "--preset", "tiny", "--dry-run", "--base-dir", own, env=env)
    for s in ("data", "tok_train", "base_train"): assert f"| {s} | corrupt |" in p.stdout, (s, p.stdout)
    # what loads them says which file and how to rebuild it, in one line
    p = run_module("speedrun", "--preset", "tiny", "--only", "base_eval", "--force", "--base-dir", own, env=env, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr
    assert "meta_000012.json is corrupt (JSONDecodeError" in p.stdout + p.stderr and "--from-stage base_train" in p.stdout + p.stderr
    p = run_module("speedrun", "--preset", "tiny", "--only", "tok_eval", "--force", "--base-dir", own, env=env, check=False)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr
    assert "tokenizer.pkl is corrupt" in p.stdout + p.stderr and "nanochat_nb.tok_train" in p.stdout + p.stderr
    p = run_module("speedrun", "--preset", "tiny", "--only", "data,tok_train", "--quiet", "--base-dir", own, env=env)
    assert f"[data] base_data/{shard.name} is truncated" in p.stdout and "[tok_train] tokenizer/tokenizer.pkl is truncated" in p.stdout, p.stdout
    assert "[data] finished" in p.stdout and "[tok_train] finished" in p.stdout
    p = run_module("speedrun", "--preset", "tiny", "--dry-run", "--base-dir", own, env=env)
    for s, status in (("data", "done"), ("tok_train", "done"), ("base_train", "changed"), ("report", "changed")):
        assert f"| {s} | {status} |" in p.stdout, (s, p.stdout)
