"""chat_eval as a user runs it: the CLI on a tiny SFT checkpoint over local copies of the six tasks, batched letter
scoring against one prompt at a time, perfect replies to real GSM8K and HumanEval problems, the offline error, bad
flags, and torchrun with two processes giving the same accuracies as one."""
import json, os, random, shutil, socket, subprocess
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import SHARED_DATA, cli_env, run_module, tiny_checkpoint
from nanochat_nb.chat_eval import load_task, predict_letters, run_categorical_eval, run_generative_eval
from nanochat_nb.checkpoint import load_model
from nanochat_nb.tasks import parts_text
from nanochat_nb.tokenizer import Tokenizer

HAVE_SHARED = (SHARED_DATA / "gsm8k" / "test.jsonl").is_file() and (SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz").is_file()
NEED_SHARED = pytest.mark.skipif(not HAVE_SHARED, reason=f"GSM8K/HumanEval copies are not in {SHARED_DATA} (see shared/data/README.md)")
ALL_SIX = ["ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee"]
OFFLINE = ["ARC-Easy", "ARC-Challenge", "MMLU", "SpellingBee"]      # local copies written by the fixture
QUICK = ["--device-type", "cpu", "--max-new-tokens", "8"]


def _mc_rows(n, seed):
    r, rows = random.Random(seed), []
    for i in range(n):
        a, b = r.randint(2, 60), r.randint(2, 60)
        wrong = r.sample([a * b + d for d in (-4, -2, -1, 1, 3, 5)], 3)
        k = r.randrange(4)
        rows.append((f"What is {a} times {b}?", [str(c) for c in wrong[:k] + [a * b] + wrong[k:]], k))
    return rows


def write_task_copies(root: Path):
    """Local copies in the layout the loaders read: ARC (hub parquet paths), MMLU (all_test.parquet), a word list."""
    for subset, seed in (("ARC-Easy", 1), ("ARC-Challenge", 2)):
        p = root / "arc" / subset / "test-00000-of-00001.parquet"
        p.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([dict(id=f"q{i}", question=q, answerKey="ABCD"[k],
                                                  choices=dict(text=c, label=list("ABCD")))
                                             for i, (q, c, k) in enumerate(_mc_rows(9, seed))]), p)
    (root / "mmlu").mkdir()
    pq.write_table(pa.Table.from_pylist([dict(question=q, choices=c, answer=k, subject="arithmetic")
                                         for q, c, k in _mc_rows(11, 3)]), root / "mmlu" / "all_test.parquet")
    (root / "spellingbee").mkdir()
    (root / "spellingbee" / "words_alpha.txt").write_text("\n".join(["strawberry", "banana", "committee", "apple", "bookkeeper"]))
    if HAVE_SHARED:
        os.symlink(SHARED_DATA / "gsm8k", root / "gsm8k")
        os.symlink(SHARED_DATA / "humaneval", root / "humaneval")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A base dir with a 512-token tokenizer and a d2 GPT (weights nudged off init) as chatsft_checkpoints/d2 step 0."""
    base = tmp_path_factory.mktemp("base")
    tiny_checkpoint(base, "chatsft_checkpoints", 400_000, 512, nudge=0.2)
    tasks = tmp_path_factory.mktemp("tasks")
    write_task_copies(tasks)
    env = cli_env(base)
    return base, env, tasks


def _result(base):
    return json.loads((base / "chat_eval" / "sft_d2_000000.json").read_text())


def _by_hand(tasks: dict) -> float:
    baseline = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25}
    return sum((r["correct"] / r["total"] - baseline.get(k, 0.0)) / (1 - baseline.get(k, 0.0)) for k, r in tasks.items()) / len(tasks)


def _check_result(res, names, n):
    assert list(res["tasks"]) == names and res["partial"] == (len(names) < 6)
    for k, r in res["tasks"].items():
        assert r["total"] == n and 0 <= r["correct"] <= n and r["accuracy"] == r["correct"] / n
        assert r["eval_type"] == ("categorical" if k in ("ARC-Easy", "ARC-Challenge", "MMLU") else "generative")
    assert res["chatcore"] == pytest.approx(_by_hand(res["tasks"]), abs=1e-12)


@NEED_SHARED
def test_cli_all_six_tasks(prepared):
    base, env, tasks = prepared
    p = run_module("chat_eval", "--max-problems", "3", "--tasks-dir", tasks, *QUICK, env=env)
    res = _result(base)
    _check_result(res, ALL_SIX, 3)
    assert "ChatCORE" in p.stdout and "partial" not in p.stdout and "results written to" in p.stdout


def test_cli_offline_tasks(prepared):
    base, env, tasks = prepared
    p = run_module("chat_eval", "-a", "|".join(OFFLINE), "--max-problems", "7", "--tasks-dir", tasks, *QUICK, env=env)
    res = _result(base)
    _check_result(res, OFFLINE, 7)
    assert "partial: over 4/6 tasks, missing GSM8K|HumanEval" in p.stdout
    assert res["settings"]["max_new_tokens"] == 8 and res["world_size"] == 1
    # the environment variable reads the same local copies as --tasks-dir
    run_module("chat_eval", "-a", "MMLU", *QUICK, env=dict(env, NANOCHAT_TASKS_DIR=str(tasks)))
    assert _result(base)["tasks"]["MMLU"]["total"] == 11


def test_batched_letters_equal_one_prompt_at_a_time(prepared):
    base, env, tasks = prepared
    os.environ["NANOCHAT_BASE_DIR"] = str(base)
    try: model, tok, _ = load_model("sft", "cpu", "eval")
    finally: os.environ.pop("NANOCHAT_BASE_DIR")
    mmlu = load_task("MMLU", tasks)
    convs = list(mmlu)
    letters, scores = predict_letters(model, tok, convs)
    with torch.inference_mode():
        for c, l, s in zip(convs, letters, scores):
            ids = tok.render_for_completion(c)
            logits = model(torch.tensor([ids]))[0, -1]
            want = logits[[tok.encode(x)[0] for x in "ABCD"]]
            assert torch.allclose(s, want, atol=1e-4) and l == "ABCD"[int(want.argmax())]
    counts = {bs: run_categorical_eval(mmlu, model, tok, batch_size=bs)["correct"] for bs in (1, 4, 11)}
    assert len(set(counts.values())) == 1, counts
    right = sum(l == c["messages"][-1]["content"] for l, c in zip(letters, convs))
    assert counts[1] == right


@NEED_SHARED
def test_perfect_replies_score_full_marks(prepared):
    """A sampler that answers with the reference (GSM8K's worked answer, HumanEval's canonical solution) scores 100%;
    one that answers the next problem's reference scores 0% on GSM8K."""
    base, env, tasks = prepared
    tok = Tokenizer.from_directory(base / "tokenizer")
    for name, n in (("GSM8K", 6), ("HumanEval", 3)):
        task = load_task(name, tasks)
        ref = {tuple(tok.render_for_completion(c)): parts_text(c["messages"][-1]["content"]) for c in task[:n + 1]}
        order = list(ref)

        def sampler(shift):
            def generate(prompt, num_samples=1, **kw):
                text = ref[order[(order.index(tuple(prompt)) + shift) % len(order)]]
                return [prompt + tok.encode(text)] * num_samples, [[1] * (len(prompt) + len(tok.encode(text)))] * num_samples
            return generate
        assert run_generative_eval(task, None, tok, max_problems=n, generate=sampler(0)) == \
            dict(correct=n, total=n, accuracy=1.0, num_samples=1)
        if name == "GSM8K":
            assert run_generative_eval(task, None, tok, max_problems=n, generate=sampler(1))["correct"] == 0


def test_offline_error_says_what_to_do(prepared):
    base, env, _ = prepared
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); dead = s.getsockname()[1]
    p = run_module("chat_eval", "-a", "ARC-Easy", *QUICK, env=dict(env, NANOCHAT_HF_URL=f"http://127.0.0.1:{dead}"),
                   check=False, timeout=200)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "could not download" in p.stderr and "ARC-Easy" in p.stderr and "offline" in p.stderr


def test_cli_cpuchat_exam_per_skill(prepared):
    "The built-in exam needs no data: its table lists each skill, its JSON counts them, and it has no ChatCORE."
    base, env, tasks = prepared
    p = run_module("chat_eval", "-a", "CPUChat", "--max-problems", "10", *QUICK, env=env)
    r = _result(base)
    assert r["chatcore"] is None and r["tasks"]["CPUChat"]["total"] == 10
    skills = r["tasks"]["CPUChat"]["skills"]
    assert list(skills) == ["identity", "arithmetic", "letters", "facts", "conversation"]
    assert all(v["total"] == 2 for v in skills.values())
    assert sum(v["correct"] for v in skills.values()) == r["tasks"]["CPUChat"]["correct"]
    assert "| CPUChat/facts | " in p.stdout and "ChatCORE" not in p.stdout
    q = run_module("chat_eval", "-a", "CPUchat", env=env, check=False)
    assert q.returncode == 1 and "unknown task 'CPUchat'" in q.stderr and "CPUChat" in q.stderr and "Traceback" not in q.stderr


def test_bad_flags_fail_clearly(prepared, tmp_path):
    base, env, tasks = prepared
    cases = [(["-a", "ARC-Easy|HellaSwag"], "unknown task 'HellaSwag'"),
             (["-a", "GSM8K", "--num-samples", "3"], "needs --temperature > 0"),
             (["-a", "MMLU", "--tasks-dir", tmp_path], "reads a local copy"),
             (["-a", "ARC-Easy", "--tasks-dir", tasks, "--model-tag", "d99"], "d99"),
             (["-a", "ARC-Easy", "--max-problems", "0"], "--max-problems 0")]
    for args, msg in cases:
        p = run_module("chat_eval", *args, env=env, check=False)
        assert p.returncode == 1 and msg in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_torchrun_two_ranks_match_one_process(prepared):
    base, env, tasks = prepared
    exe = shutil.which("torchrun")
    assert exe, "torchrun is not on PATH"
    names = "|".join(["ARC-Easy", "MMLU", "SpellingBee"] + (["GSM8K"] if HAVE_SHARED else []))
    args = ["-m", "nanochat_nb.chat_eval", "-i", "sft", "-a", names, "--max-problems", "7", "--batch-size", "3",
            "--tasks-dir", str(tasks), *QUICK]
    run_module("chat_eval", *args[2:], env=env)
    one = _result(base)
    p = subprocess.run([exe, "--standalone", "--nproc_per_node=2", *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    two = _result(base)
    assert two["world_size"] == 2 and p.stdout.count("results written to") == 1     # rank 0 alone writes
    assert {k: (r["correct"], r["total"]) for k, r in two["tasks"].items()} == \
        {k: (r["correct"], r["total"]) for k, r in one["tasks"].items()}
    assert two["chatcore"] == pytest.approx(one["chatcore"], abs=1e-12)
