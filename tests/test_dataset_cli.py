"""The dataset and bench CLIs as a user runs them: real subprocesses, real files."""
import json, shutil, subprocess, sys
import pytest
import pyarrow as pa, pyarrow.parquet as pq

from conftest import SHARED_DATA, cli_env, run_module


def _texts(path):
    return pq.read_table(path).column("text").to_pylist()


def test_synthetic_corpus_cli(tmp_path, base_env):
    out = tmp_path / "data"
    p = run_module("dataset", "--synthetic", "--chars", "3e6", "--shard-chars", "1e6", "--data-dir", out, "-w", "2", env=base_env)
    assert "data ready: 2 train shard(s) and 1 val shard" in p.stdout
    files = sorted(out.glob("*.parquet"))
    assert [f.name for f in files] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    for f in files:
        t = pq.read_table(f)
        assert t.column_names == ["text"] and t.schema.field("text").type == pa.string()
        assert pq.ParquetFile(f).metadata.row_group(0).num_rows == 1000
    assert json.loads((out / "dataset.json").read_text())["source"] == "synthetic"
    # the same corpus with one worker, in another folder: identical documents (seeded per shard)
    run_module("dataset", "--synthetic", "--chars", "3e6", "--shard-chars", "1e6", "--data-dir", tmp_path / "d1", "-w", "1", env=base_env)
    for f in files: assert _texts(f) == _texts(tmp_path / "d1" / f.name)
    # a second run is a no-op; another seed is different text
    p = run_module("dataset", "--synthetic", "--chars", "3e6", "--shard-chars", "1e6", "--data-dir", out, env=base_env)
    assert "nothing to do" in p.stdout
    run_module("dataset", "--synthetic", "--chars", "3e6", "--shard-chars", "1e6", "--seed", "7", "--data-dir", tmp_path / "d7", env=base_env)
    assert _texts(files[0])[:50] != _texts(tmp_path / "d7" / files[0].name)[:50]


def test_default_data_dir_under_base_dir(base_env, tmp_path):
    run_module("dataset", "--synthetic", "--chars", "2e5", env=base_env)
    assert len(list((tmp_path / "base" / "base_data").glob("shard_*.parquet"))) == 2


def test_convert_cli(tmp_path, base_env):
    src = tmp_path / "mine"; src.mkdir()
    (src / "a.jsonl").write_text("\n".join(json.dumps({"body": f"line {i}"}) for i in range(60)))
    (src / "b.txt").write_text("a whole text file is one document")
    p = run_module("dataset", "--from", src, "--text-field", "body", "--data-dir", tmp_path / "out", env=base_env)
    files = sorted((tmp_path / "out").glob("*.parquet"))
    docs = [d for f in files for d in _texts(f)]
    assert len(docs) == 61 and len(_texts(files[-1])) == 3  # every 20th document is validation
    # without --text-field the jsonl has no 'text': a one-line error naming the file, exit 1, no traceback
    p = run_module("dataset", "--from", src, "--data-dir", tmp_path / "out2", env=base_env, check=False)
    assert p.returncode == 1 and "a.jsonl:1 has no 'text' field" in p.stderr and "Traceback" not in p.stderr


def test_bad_flags_fail_clearly(tmp_path, base_env):
    p = run_module("dataset", "--synthetic", "--chars", "0", "--data-dir", tmp_path / "x", env=base_env, check=False)
    assert p.returncode == 1 and "--chars" in p.stderr
    p = run_module("dataset", "--synthetic", "--chars", "lots", env=base_env, check=False)
    assert p.returncode == 2 and "--chars" in p.stderr and "'lots'" in p.stderr
    p = run_module("dataset", "-n", "0", "--data-dir", tmp_path / "y", env=base_env, check=False)
    assert p.returncode == 1 and "-n/--num-files" in p.stderr
    # mixing sources in one folder is refused
    run_module("dataset", "--synthetic", "--chars", "2e5", "--data-dir", tmp_path / "z", env=base_env)
    src = tmp_path / "src"; src.mkdir(); (src / "a.txt").write_text("x"); (src / "b.txt").write_text("y")
    p = run_module("dataset", "--from", src, "--data-dir", tmp_path / "z", env=base_env, check=False)
    assert p.returncode == 1 and "would mix two datasets" in p.stderr


def test_download_cli_against_mirror(http_server, tmp_path, base_env):
    for i in [0, 1, 6542]:
        pq.write_table(pa.table({"text": [f"doc {i}.{j}" for j in range(10)]}), http_server.root / f"shard_{i:05d}.parquet")
    p = run_module("dataset", "-n", "2", "-w", "2", "--base-url", http_server.url, "--data-dir", tmp_path / "cm", env=base_env)
    assert sorted(f.name for f in (tmp_path / "cm").glob("*.parquet")) == ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    assert "data ready: 2 train shard(s)" in p.stdout


def test_offline_download_cli_message(tmp_path, base_env):
    p = run_module("dataset", "-n", "1", "--retries", "2", "--base-url", "http://127.0.0.1:9", "--data-dir", tmp_path / "off", env=base_env,
                   check=False, timeout=200)
    assert p.returncode == 1 and "place it at" in p.stderr and "Traceback" not in p.stderr
    assert list((tmp_path / "off").glob("*.parquet")) == []


def test_bench_corpus_last_line(base_env):
    p = run_module("bench", "corpus", "--chars", "2e6", "--shard-chars", "5e5", env=base_env)
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("corpus: ") and "chars/s" in last
    rate = float(last.split()[1].replace(",", ""))
    assert rate > 0


def test_console_scripts_installed(base_env):
    exe = shutil.which("nanochat-dataset")
    assert exe, "nanochat-dataset is not on PATH: install the package (pip install -e .)"
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, env=base_env)
    assert p.returncode == 0 and "--shard-chars" in p.stdout and "--num_files" not in p.stdout
    p = subprocess.run([shutil.which("nanochat-bench")], capture_output=True, text=True, env=base_env)
    assert p.returncode == 0 and "corpus" in p.stdout


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "test.jsonl").is_file(), reason=f"no copies of the eval data in {SHARED_DATA}")
def test_seed_from_fills_the_cache_the_loaders_read(tmp_path):
    "`--seed-from DIR` copies the original releases into the cache; the task loaders and CORE then work with no network."
    env = {**cli_env(tmp_path), "NANOCHAT_HF_URL": "http://127.0.0.1:9"}          # any download attempt would fail
    p = run_module("dataset", "--seed-from", SHARED_DATA, env=env, timeout=120)
    assert "seeded gsm8k" in p.stdout and (tmp_path / "eval_bundle" / "core.yaml").is_file()
    code = ("from nanochat_nb.tasks import GSM8K, HumanEval; from nanochat_nb.evaluate import load_core_tasks; from nanochat_nb.eval_bundle import get_eval_bundle;"
            "print(len(GSM8K('main', 'test')), len(GSM8K('main', 'train')), len(HumanEval()), len(load_core_tasks(get_eval_bundle(retries=1))))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1319", "7473", "164", "18"]
    bad = run_module("dataset", "--seed-from", tmp_path / "nothing", env=env, check=False)
    assert bad.returncode == 1 and "none of gsm8k/, humaneval/, eval_bundle/ is there" in bad.stderr and "Traceback" not in bad.stderr
