"""The tokenizer CLIs as real processes: `python -m nanochat_nb.tok_train` and `python -m nanochat_nb.tok_eval`
on a tiny embedded corpus in a temporary folder (exit codes, files written, error messages)."""
import os, subprocess, sys

import pytest
import torch

from nanochat_nb.dataset import write_synthetic_corpus
from nanochat_nb.tokenizer import SPECIAL_TOKENS, get_token_bytes, get_tokenizer


def run(args, base, timeout=240):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base)}
    env.pop("NANOCHAT_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    write_synthetic_corpus(900_000, shard_chars=300_000, data_dir=base / "base_data", num_workers=1, verbose=False)
    return base


@pytest.fixture(scope="module")
def trained(base):
    r = run(["nanochat_nb.tok_train", "--max-chars", "500000", "--doc-cap", "5000", "--vocab-size", "700"], base)
    assert r.returncode == 0, r.stderr
    return base, r.stdout


def test_tok_train_writes_nanochat_layout(trained):
    base, out = trained
    d = base / "tokenizer"
    assert sorted(p.name for p in d.iterdir()) == ["token_bytes.pt", "tokenizer.pkl"]
    assert "training time:" in out
    tok = get_tokenizer(d)
    assert tok.get_vocab_size() == 700
    assert [tok.encode_special(s) for s in SPECIAL_TOKENS] == list(range(691, 700))
    tb = get_token_bytes("cpu", d)
    assert tb.dtype == torch.int32 and tb.shape == (700,)
    assert tb[-9:].tolist() == [0] * 9 and tb[:256].tolist() == [1] * 256
    assert all(int(tb[i]) == len(tok.enc.decode_single_token_bytes(i)) for i in range(256, 691))
    s = "Once upon a time, 12345 robots said 😀 and <|bos|>."
    assert tok.decode(tok.encode(s)) == s


def test_tok_train_data_dir_and_tokenizer_dir_flags(base, tmp_path):
    r = run(["nanochat_nb.tok_train", "--max_chars", "200000", "--vocab_size", "400", "--data-dir",
             str(base / "base_data"), "--tokenizer-dir", str(tmp_path / "tk"), "--num-workers", "2"], tmp_path / "other")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tk" / "tokenizer.pkl").exists()
    assert get_tokenizer(tmp_path / "tk").get_vocab_size() == 400


def test_tok_train_bad_input(base, tmp_path):
    r = run(["nanochat_nb.tok_train", "--vocab-size", "100"], base)
    assert r.returncode != 0 and "--vocab-size 100 is too small" in r.stderr
    r = run(["nanochat_nb.tok_train", "--max-chars", "-5"], base)
    assert r.returncode != 0 and "--max-chars must be positive" in r.stderr
    r = run(["nanochat_nb.tok_train", "--vocab-size", "lots"], base)
    assert r.returncode == 2 and "--vocab-size" in r.stderr
    r = run(["nanochat_nb.tok_train"], tmp_path / "empty_base")       # no shards at all
    assert r.returncode != 0 and "needs at least 2" in r.stderr and "nanochat_nb.dataset" in r.stderr


def test_tok_eval(trained):
    base, _ = trained
    r = run(["nanochat_nb.tok_eval", "--timeout", "10"], base)
    assert r.returncode == 0, r.stderr
    for row in ["train shard", "val shard", "prose", "code", "math", "non-English"]: assert row in r.stdout
    assert "bytes per token" in r.stdout
    assert ("vs GPT-4" in r.stdout) or ("GPT-4: not available" in r.stdout)   # compared, or said plainly


def test_tok_eval_missing_tokenizer(tmp_path):
    r = run(["nanochat_nb.tok_eval", "--tokenizer-dir", str(tmp_path / "none"), "--no-references"], tmp_path)
    assert r.returncode != 0 and "does not exist" in r.stderr and "tok_train" in r.stderr
    (tmp_path / "empty_tok").mkdir()
    r = run(["nanochat_nb.tok_eval", "--tokenizer-dir", str(tmp_path / "empty_tok"), "--no-references"], tmp_path)
    assert r.returncode != 0 and "has no tokenizer.pkl" in r.stderr


def test_bench_tokenizer_prints_ratios(base):
    r = run(["nanochat_nb.bench", "tokenizer", "--max-chars", "200000", "--vocab-size", "600", "--data-dir",
             str(base / "base_data"), "--repeats", "1"], base)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("tokenizer: train") and "tiktoken" in last and last.count("(x") >= 1
