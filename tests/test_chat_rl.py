"""chat_rl as a user runs it: errors that say what to do, a short RL run through the CLI that saves a loadable
checkpoint with its history, and torchrun with two processes (questions split by rank, identical weights)."""
import json, shutil, subprocess
import pytest
import torch

from conftest import cli_env, run_module

RL = ["--source", "sft", "--model-tag", "d2", "--task", "arithmetic", "--examples-per-step", "2", "--num-samples", "4",
      "--device-batch-size", "4", "--max-new-tokens", "24", "--init-lr-frac", "2.0", "--eval-examples", "2", "--pass-k", "2",
      "--arith-size", "200", "--device-type", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A base dir with a tokenizer, a briefly pretrained d2 and a briefly fine-tuned SFT checkpoint (built once here)."""
    from nanochat_nb.base_train import train
    from nanochat_nb.chat_sft import train_sft
    from nanochat_nb.dataset import iter_documents, write_synthetic_corpus
    from nanochat_nb.tokenizer import Tokenizer
    base = tmp_path_factory.mktemp("base")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        write_synthetic_corpus(1_000_000, shard_chars=500_000, data_dir=base / "data", num_workers=1, verbose=False)
        tok = Tokenizer.train_from_iterator(iter_documents("train", max_chars=500_000, data_dir=base / "data"), 512)
        tok.save(base / "tokenizer")
        train(depth=2, head_dim=32, max_seq_len=256, window_pattern="L", device_batch_size=8, total_batch_size=2048,
              num_iterations=20, warmup_steps=2, eval_every=-1, eval_tokens=2048, sample_every=-1, device_type="cpu",
              data_dir=base / "data", tokenizer_dir=base / "tokenizer", base_dir=base, log_every=0)
        train_sft(mixture="synthetic", arith_size=400, identity_epochs=0, chat_size=0, num_iterations=30, eval_every=-1, eval_steps=1,
                  device_type="cpu", base_dir=base, log_every=0)
    finally:
        torch.set_num_threads(threads)
    return base, cli_env(base)


def test_bad_flags_fail_at_start(prepared, base_env):
    base, env = prepared
    p = run_module("chat_rl", *RL, env=base_env, check=False)       # an empty base dir: no SFT checkpoint yet
    assert p.returncode == 1 and "python -m nanochat_nb.chat_sft" in p.stderr and "Traceback" not in p.stderr
    p = run_module("chat_rl", *RL, "--task", "mmlu", env=env, check=False)
    assert p.returncode == 1 and "--task 'mmlu'" in p.stderr and "Traceback" not in p.stderr
    from nanochat_nb.chat_rl import main                             # the rest in-process: the same checks, no start-up cost
    for flags, msg in [(["--num-samples", "6"], "--num-samples 6 must be a multiple"),
                       (["--temperature", "0"], "--temperature 0.0 must be > 0"), (["--num-steps", "0"], "--num-steps 0"),
                       (["--pass-k", "0"], "--pass-k 0"), (["--source", "pre"], "--source 'pre'"),
                       (["--init-lr-frac", "0"], "--init-lr-frac 0"), (["--step", "7"], "--step 7: no checkpoint step 7"),
                       (["--model-tag", "d9"], "no sft checkpoint in"), (["--arith-size", "0"], "--arith-size 0"),
                       (["--arith-level", "hard"], "--arith-level 'hard'"), (["--arith-reward", "half"], "--arith-reward 'half'")]:
        with pytest.raises((ValueError, FileNotFoundError)) as e: main.cli([*RL, *flags, "--base-dir", str(base)])
        assert msg in str(e.value), (flags, str(e.value))


def test_cli_run_saves_a_loadable_checkpoint_with_history(prepared):
    base, env = prepared
    p = run_module("chat_rl", *RL, "--num-steps", "3", "--eval-every", "2", "--save-every", "2", env=env)
    assert "warm-started the optimizer" in p.stdout and "weights identical across 1 rank(s)" in p.stdout
    assert "task arithmetic, mixed, shaped reward" in p.stdout                              # the defaults
    d = base / "chatrl_checkpoints" / "d2"
    assert (d / "model_000002.pt").exists() and (d / "model_000003.pt").exists()     # every --save-every, and the end
    meta = json.loads((d / "meta_000003.json").read_text())
    hist = meta["history"]
    assert [h["step"] for h in hist] == [0, 1, 2, 3]
    assert all("mean_reward" in h and 0 <= h["mean_reward"] <= 1 and "lr" in h for h in hist[:3])
    assert [h["step"] for h in hist if "pass@1" in h] == [0, 2, 3] and all(h["k"] == 2 for h in hist if "pass@1" in h)
    assert hist[0]["lr"] > hist[1]["lr"] > hist[2]["lr"] > 0                               # linear decay to 0
    assert meta["source"] == {"phase": "sft", "model_tag": "d2", "step": 30} and meta["model_config"]["n_layer"] == 2
    assert any(h["mean_reward"] > 0 for h in hist[:3])                                      # some answers earned reward
    from nanochat_nb.checkpoint import load_model
    model, tok, m2 = load_model("rl", "cpu", base_dir=base)
    assert m2["step"] == 3 and tok.get_vocab_size() == model.config.vocab_size
    sft = torch.load(base / "chatsft_checkpoints" / "d2" / "model_000030.pt")
    rl = torch.load(d / "model_000003.pt")
    assert any(not torch.equal(sft[k], rl[k]) for k in sft)                                 # RL moved the weights


def test_torchrun_two_ranks(prepared):
    base, env = prepared
    cmd = [shutil.which("torchrun"), "--standalone", "--nproc_per_node=2", "-m", "nanochat_nb.chat_rl", *RL,
           "--num-steps", "2", "--eval-every", "-1", "--output-tag", "ddp", "--examples-per-step", "4",
           "--arith-level", "easy", "--arith-reward", "strict"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 question(s) per rank, 2 rank(s)" in p.stdout and "task arithmetic, easy, strict reward" in p.stdout
    assert "weights identical across 2 rank(s)" in p.stdout
    meta = json.loads((base / "chatrl_checkpoints" / "ddp" / "meta_000002.json").read_text())
    assert meta["world_size"] == 2 and [h["step"] for h in meta["history"]] == [0, 1, 2]
    assert meta["user_config"]["arith_level"] == "easy" and meta["user_config"]["arith_reward"] == "strict"
    assert all(float(h["mean_reward"] * 16).is_integer() for h in meta["history"][:2])     # 16 rewards, each 0 or 1
    assert meta["history"][0]["questions"] == [[0, 2], [1, 3]] and meta["history"][1]["questions"] == [[4, 6], [5, 7]]
    sft = torch.load(base / "chatsft_checkpoints" / "d2" / "model_000030.pt")
    rl = torch.load(base / "chatrl_checkpoints" / "ddp" / "model_000002.pt")
    assert any(not torch.equal(sft[k], rl[k]) for k in sft)
    bad = [c if c != "4" or cmd[i - 1] != "--examples-per-step" else "3" for i, c in enumerate(cmd)]
    p = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "--examples-per-step 3 must be a multiple of the number of ranks (2)" in p.stderr
