"""The preflight as a user runs it: `speedrun --preflight --preset tiny` on this machine prints a go/no-go table with every
stage GO (or CORE skipped without an eval bundle) and exits 0; a data dir that cannot be created is a NO-GO with its reason
and a non-zero exit; `bench gpu` refuses in one line without CUDA."""
import re
from pathlib import Path
import pytest
import torch

from conftest import SHARED_DATA, cli_env, run_module

BUNDLES = [SHARED_DATA / "eval_bundle", Path.home() / ".cache" / "nanochat_nb" / "eval_bundle"]

ROWS = ["attention", "data+disk", "data", "tok_train", "tok_eval", "base_train", "resume", "base_eval", "mid_train", "chat_sft", "chat_eval",
        "chat_rl", "rl_eval", "engine", "chat_web"]


def _rows(out):
    return {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| ([\w+]+) \| ([\d.]+)s \| ([\d,]+|-) \| ([\d,]+|-) \| (GO|NO-GO|SKIP) \| (.*) \|$",
                                                         out, re.M)}


def test_tiny_preflight_is_go_and_leaves_the_base_dir_alone(tmp_path):
    base = tmp_path / "base"
    bundle = next((b for b in BUNDLES if (b / "core.yaml").is_file()), None)   # the CORE bundle a seeded cache holds
    if bundle: base.mkdir(); (base / "eval_bundle").symlink_to(bundle.resolve())
    p = run_module("speedrun", "--preflight", "--preset", "tiny", "--base-dir", base, env=cli_env(base), timeout=600)
    rows = _rows(p.stdout)
    assert list(rows) == ROWS, p.stdout
    for name, (secs, mem, tok_s, verdict, reason) in rows.items():
        if name == "base_eval" and not bundle:
            assert verdict == "SKIP" and "no eval bundle, run python -m nanochat_nb.dataset --seed-from" in reason
        else: assert verdict == "GO", (name, reason)
        if name not in ("attention", "data+disk", "chat_web"): assert mem != "-", name          # peak RSS of the stage's processes
    assert "weights bit-identical" in rows["resume"][4] and "killed (SIGKILL)" in rows["resume"][4]
    assert float(rows["base_train"][2].replace(",", "")) > 0 and float(rows["engine"][2].replace(",", "")) > 0
    assert re.search(r"^attention backend: (sdpa|flex)$", p.stdout, re.M) and rows["attention"][4].startswith(("sdpa (float32)", "flex (float32)"))
    assert re.search(r"^full run ETA: \d+m\d\ds = base_train [\d,]+ tokens at [\d,]+ tok/s measured", p.stdout, re.M)
    assert "preflight: GO" in p.stdout and p.returncode == 0
    if bundle: assert rows["base_eval"][4].startswith("CORE on 2 tasks of ")
    assert sorted(p.name for p in base.iterdir()) == (["eval_bundle"] if bundle else [])   # the real run's dir is untouched


def test_a_data_dir_that_cannot_be_created_is_no_go(tmp_path):
    base, blocker = tmp_path / "base", tmp_path / "afile"
    blocker.write_text("not a folder")
    env = {**cli_env(base), "NANOCHAT_DATA_DIR": str(blocker / "base_data")}
    p = run_module("speedrun", "--preflight", "--preset", "tiny", "--base-dir", base, env=env, timeout=120, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert _rows(p.stdout)["data+disk"][3] == "NO-GO"
    assert f"error: preflight NO-GO: data+disk: data dir {blocker / 'base_data'} cannot be created: {blocker} is a file: " \
           "the full run writes there; fix it or choose another" in p.stderr.splitlines()
    assert p.stderr.strip().splitlines()[-1] == "error: preflight NO-GO: see the table above"
    assert "Traceback" not in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_bench_gpu_refuses_without_cuda(tmp_path):
    p = run_module("bench", "gpu", env=cli_env(tmp_path), timeout=120, check=False)
    assert p.returncode == 2 and p.stderr.strip().startswith("no CUDA device: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
