"""base_eval as a user runs it: the CLI on a tiny checkpoint, the shared CORE bundle (when present), downloading the
bundle from a local server, the offline error, bad flags, and torchrun with two processes giving the same numbers."""
import json, shutil, socket, subprocess, zipfile
from pathlib import Path
import pytest

from conftest import SHARED_DATA, cli_env, run_module, tiny_checkpoint
from nanochat_nb.evaluate import CORE_NUM_TASKS, SAMPLE_TASKS, centered_score, write_sample_bundle

SHARED_BUNDLE = SHARED_DATA / "eval_bundle"
QUICK = ["--device-type", "cpu", "--device-batch-size", "2", "--split-tokens", "1024"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A base dir with a small corpus, a 1,024-token tokenizer and a random d2 checkpoint (base_checkpoints/d2, step 0)."""
    base = tmp_path_factory.mktemp("base")
    tiny_checkpoint(base, "base_checkpoints", 1_000_000, 1024)
    sample = write_sample_bundle(tmp_path_factory.mktemp("bundle") / "sample")
    env = cli_env(base)
    return base, env, sample


def _result(base, name="d2_000000.json"):
    return json.loads((base / "base_eval" / name).read_text())


def test_cli_core_bpb_sample_on_sample_bundle(prepared):
    base, env, sample = prepared
    p = run_module("base_eval", "--eval", "core,bpb,sample", "--max-per-task", "4", "--eval-bundle", sample, *QUICK, env=env)
    res = _result(base)
    assert res["evals"] == ["core", "bpb", "sample"] and (res["model_tag"], res["step"]) == ("d2", 0)
    core = res["core"]
    assert list(core["tasks"]) == list(SAMPLE_TASKS) and core["num_tasks"] == 3 and core["partial"]
    for label, r in core["tasks"].items():
        assert r["items"] == 4 and 0 <= r["accuracy"] <= 1
        assert abs(r["centered"] - centered_score(r["accuracy"], SAMPLE_TASKS[label][3])) < 1e-12
    assert abs(core["core"] - sum(r["centered"] for r in core["tasks"].values()) / 3) < 1e-12
    assert 1 < res["bpb"]["train"] < 10 and 1 < res["bpb"]["val"] < 10
    assert len(res["samples"]) == 7
    assert "| capitals | multiple_choice | 2 | 4 |" in p.stdout and "over 3/22 tasks (partial CORE" in p.stdout
    assert "bits per byte on" in p.stdout and "results written to" in p.stdout


@pytest.mark.skipif(not (SHARED_BUNDLE / "core.yaml").is_file(),
                    reason=f"the shared CORE eval bundle is not at {SHARED_BUNDLE} (see shared/data/README.md)")
def test_cli_core_on_shared_bundle(prepared):
    base, env, _ = prepared
    p = run_module("base_eval", "--eval", "core", "--max-per-task", "3", "--eval-bundle", SHARED_BUNDLE, *QUICK, env=env)
    core = _result(base)["core"]
    assert core["num_tasks"] == 18 and core["partial"] and CORE_NUM_TASKS == 22
    assert {r["task_type"] for r in core["tasks"].values()} == {"multiple_choice", "schema", "language_modeling"}
    assert all(r["items"] == 3 for r in core["tasks"].values())
    assert "over 18/22 tasks (partial CORE" in p.stdout


def test_bundle_downloaded_when_absent(prepared, http_server, tmp_path):
    base, env, sample = prepared
    with zipfile.ZipFile(http_server.root / "eval_bundle.zip", "w") as z:
        for f in sorted(sample.rglob("*")):
            if f.is_file(): z.write(f, f"eval_bundle/{f.relative_to(sample)}")
    own = tmp_path / "own_base"
    shutil.copytree(base, own, ignore=shutil.ignore_patterns("base_eval", "base_data"))
    env = dict(env, NANOCHAT_BASE_DIR=str(own))
    http_server.faults["eval_bundle.zip"] = [503]                     # one transient failure, then the file
    run_module("base_eval", "--eval", "core", "--max-per-task", "2", "--eval-bundle-url",
               f"{http_server.url}/eval_bundle.zip", *QUICK, env=env)
    assert (own / "eval_bundle" / "core.yaml").is_file() and not (own / "eval_bundle.zip").exists()
    assert http_server.requests == ["eval_bundle.zip", "eval_bundle.zip"]
    assert _result(own)["core"]["num_tasks"] == 3
    # a second run finds the bundle and does not ask again
    run_module("base_eval", "--eval", "core", "--max-per-task", "2", "--eval-bundle-url",
               f"{http_server.url}/eval_bundle.zip", *QUICK, env=env)
    assert len(http_server.requests) == 2


def test_offline_error_says_what_to_do(prepared, tmp_path):
    base, env, _ = prepared
    own = tmp_path / "own_base"
    shutil.copytree(base / "base_checkpoints", own / "base_checkpoints")
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); dead = s.getsockname()[1]
    p = run_module("base_eval", "--eval", "core", "--eval-bundle-url", f"http://127.0.0.1:{dead}/eval_bundle.zip", *QUICK,
                   env=dict(env, NANOCHAT_BASE_DIR=str(own)), check=False, timeout=200)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "could not download" in p.stderr and "--eval-bundle DIR" in p.stderr
    assert not (own / "eval_bundle").exists()


def test_bad_flags_fail_clearly(prepared, tmp_path):
    base, env, sample = prepared
    p = run_module("base_eval", "--eval", "core,mmlu", env=env, check=False)
    assert p.returncode == 1 and "--eval 'core,mmlu'" in p.stderr and "Traceback" not in p.stderr
    p = run_module("base_eval", "--eval", "core", "--eval-bundle", tmp_path / "nowhere", env=env, check=False)
    assert p.returncode == 1 and "no core.yaml" in p.stderr
    p = run_module("base_eval", "--eval", "core", "--model-tag", "d99", "--eval-bundle", sample, env=env, check=False)
    assert p.returncode == 1 and "d99" in p.stderr
    p = run_module("base_eval", "--eval", "bpb", "--data-dir", tmp_path, env=env, check=False)
    assert p.returncode == 1 and "leave bpb out of --eval" in p.stderr


def test_torchrun_two_ranks_match_one_process(prepared):
    base, env, sample = prepared
    exe = shutil.which("torchrun")
    assert exe, "torchrun is not on PATH"
    bundle = SHARED_BUNDLE if (SHARED_BUNDLE / "core.yaml").is_file() else sample
    args = ["-m", "nanochat_nb.base_eval", "-i", "base", "--eval", "core,bpb,sample", "--max-per-task", "5",
            "--eval-bundle", str(bundle), *QUICK]
    run_module("base_eval", *args[2:], env=env)
    one = _result(base)
    p = subprocess.run([exe, "--standalone", "--nproc_per_node=2", *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    two = _result(base)
    assert two["world_size"] == 2 and p.stdout.count("results written to") == 1     # rank 0 alone prints and writes
    assert {k: r["accuracy"] for k, r in two["core"]["tasks"].items()} == {k: r["accuracy"] for k, r in one["core"]["tasks"].items()}
    assert two["core"]["core"] == pytest.approx(one["core"]["core"], abs=1e-12)
    assert 1 < two["bpb"]["val"] < 10        # bpb covers different rows with two ranks: same scale, not the same number
    assert two["samples"] == one["samples"] and p.stdout.count("sample: ") == 7      # rank 0 samples, once


def test_prompts_match_jinja_templates():
    """The f-string renderers produce exactly what DCLM-style Jinja templates produce (whitespace control included),
    on the first items of every task of the shared bundle (or of the sample bundle when it is absent)."""
    jinja2 = pytest.importorskip("jinja2", reason="jinja2 is not installed; the renderers are checked by hand-written strings in chapter 08")
    from nanochat_nb.evaluate import RENDERERS, fewshot_indices, load_core_tasks, load_task_data
    env = jinja2.Environment()
    shots = "{%- for ex in shots -%}"
    templates = {
        "multiple_choice": env.from_string(shots + "{{ ex.query }}{{ d }}{{ ex.choices[ex.gold] }}\n\n{% endfor -%}"
                                           "{{ item.query }}{{ d }}{{ choice }}"),
        "schema": env.from_string(shots + "{{ ex.context_options[ex.gold] }}{{ d }}{{ ex.continuation }}\n\n{% endfor -%}"
                                  "{{ ctx }}{{ d }}{{ item.continuation }}"),
        "language_modeling": env.from_string(shots + "{{ ex.context | trim }}{{ d }}{{ ex.continuation }}\n\n{% endfor -%}"
                                             "{{ item.context | trim }}{{ d }}{% if full %}{{ item.continuation }}{% endif %}"),
    }
    def render(kind, item, d, ex):
        t = templates[kind]
        if kind == "multiple_choice": return [t.render(shots=ex, d=d, item=item, choice=c) for c in item["choices"]]
        if kind == "schema": return [t.render(shots=ex, d=d, item=item, ctx=c) for c in item["context_options"]]
        return [t.render(shots=ex, d=d, item=item, full=False).strip(), t.render(shots=ex, d=d, item=item, full=True)]
    bundle = SHARED_BUNDLE if (SHARED_BUNDLE / "core.yaml").is_file() else None
    if bundle is None:
        import tempfile
        bundle = write_sample_bundle(Path(tempfile.mkdtemp()) / "sample")
    for t in load_core_tasks(bundle):
        data = load_task_data(t["path"])
        for i in range(min(40, len(data))):
            ex = [data[j] for j in fewshot_indices(len(data), i, t["num_fewshot"])]
            got = RENDERERS[t["task_type"]](data[i], t["continuation_delimiter"], ex)
            assert got == render(t["task_type"], data[i], t["continuation_delimiter"], ex), (t["label"], i)
