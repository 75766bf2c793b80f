"""Tasks: the Task API, mixtures, the dataset loaders against a local HTTP server laid out like the Hugging Face hub,
local-folder overrides, the offline error, and GSM8K / HumanEval on the real files when they are present."""
import json, os, socket, subprocess, sys
import pyarrow as pa, pyarrow.parquet as pq
import pytest

from conftest import SHARED_DATA
from nanochat_nb.download import DownloadError
from nanochat_nb.execution import use_calculator
from nanochat_nb.tasks import (ARC, GSM8K, MMLU, CustomJSON, HumanEval, IdentityConversations, SmolTalk, SpellingBee, SyntheticSpelling, Task, TaskMixture, TaskSequence, extract_answer, calculator_parts, extract_program, load_word_list, parts_text, task_files)
from nanochat_nb.cpu_tasks import CPUChat, SyntheticArithmetic
from nanochat_nb.tokenizer import Tokenizer

BYTE_TOK = Tokenizer.from_merges([bytes([i]) for i in range(256)])


def _hub(srv, repo, rel, table):
    "Put `table` where the hub would serve `repo`'s file `rel` on the test server."
    p = srv.root / "datasets" / repo / "resolve" / "main" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, p)


def _number_matches(got, stated):
    try: return got is not None and abs(float(got) - float(stated.replace(",", ""))) <= 1e-6 * max(1.0, abs(float(got)))
    except ValueError: return False


def _tool_calls(conv):
    parts = conv["messages"][-1]["content"]
    return [(p["text"], q["text"]) for p, q in zip(parts, parts[1:]) if p["type"] == "python" and q["type"] == "python_output"]


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    monkeypatch.delenv("NANOCHAT_TASKS_DIR", raising=False)
    monkeypatch.delenv("NANOCHAT_HF_URL", raising=False)
    return tmp_path / "base"


# ---------------------------------------------------------------- the API

class Count(Task):
    def __init__(self, n, kind="generative", **kw): super().__init__(**kw); self.n, self.kind = n, kind
    @property
    def eval_type(self): return self.kind
    def num_examples(self): return self.n
    def get_example(self, i): return {"messages": [{"role": "user", "content": "n?"}, {"role": "assistant", "content": str(i)}]}


def _ids(task): return [int(c["messages"][-1]["content"]) for c in task]


def test_slicing_matches_python_ranges():
    for start, stop, step in [(0, None, 1), (3, None, 2), (2, 9, 3), (0, 100, 7), (10, 10, 1), (25, None, 1)]:
        assert _ids(Count(20, start=start, stop=stop, step=step)) == list(range(20))[start:stop:step]
    t = Count(20, start=2, step=5)
    assert _ids(t) == [2, 7, 12, 17] and [int(c["messages"][1]["content"]) for c in t[1:3]] == [7, 12]
    with pytest.raises(IndexError, match="out of range"): t[4]
    with pytest.raises(ValueError, match="start=-1"): Count(3, start=-1)


def test_mixture_sequence_and_epochs():
    a, b = Count(30), Count(7)
    seq = TaskSequence([a, b])
    assert _ids(seq) == list(range(30)) + list(range(7))
    mix = TaskMixture([a, b, b])
    ids = _ids(mix)
    assert sorted(ids) == sorted(list(range(30)) + 2 * list(range(7)))
    assert ids == _ids(TaskMixture([a, b, b])) and ids != _ids(TaskSequence([a, b, b]))
    assert len(TaskMixture([a, b], start=5, stop=20, step=3)) == 5
    nested = TaskMixture([TaskSequence([a, b]), Count(3)])
    assert sorted(_ids(nested)) == sorted(list(range(30)) + list(range(7)) + list(range(3)))
    with pytest.raises(ValueError, match="mixes eval types"):
        TaskMixture([a, Count(2, kind="categorical")]).eval_type


def test_generated_tasks_do_not_depend_on_the_hash_seed():
    "String seeds are hashed with sha512 by `random`, not with Python's salted hash: another process draws the same examples."
    code = ("from nanochat_nb.tasks import *; from nanochat_nb.cpu_tasks import SyntheticArithmetic; import json; "
            "print(json.dumps([SyntheticSpelling(50, mode='mixed')[7], SyntheticArithmetic(50)[7], "
            "[c['messages'][0]['content'] for c in TaskMixture([SyntheticArithmetic(20), SyntheticSpelling(20)])[:5]]]))")
    here = json.dumps([SyntheticSpelling(50, mode="mixed")[7], SyntheticArithmetic(50)[7],
                       [c["messages"][0]["content"] for c in TaskMixture([SyntheticArithmetic(20), SyntheticSpelling(20)])[:5]]])
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
    assert there == here


def test_cpuchat_exam_is_the_same_in_every_process():
    "The exam's questions and answers come from string seeds (towns from the corpus lexicon included), so every run asks the same."
    code = "from nanochat_nb.cpu_tasks import CPUChat; import json; print(json.dumps([CPUChat(8, seed=3)[i] for i in range(40)]))"
    here = json.dumps([CPUChat(8, seed=3)[i] for i in range(40)])
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
    assert there == here
    exam = CPUChat(8, seed=3)
    assert all(exam.evaluate(c, parts_text(c["messages"][-1]["content"])) for c in exam)   # references pass their own rule
    assert not any(exam.evaluate(c, "I don't know.") for c in exam)


# ---------------------------------------------------------------- synthetic tasks

def test_synthetic_arithmetic_tool_calls_and_rewards():
    t = SyntheticArithmetic(300, steps=None, seed=3)
    py_id, out_id = BYTE_TOK.encode_special("<|python_start|>"), BYTE_TOK.encode_special("<|output_start|>")
    for conv in t:
        calls = _tool_calls(conv)
        assert calls and all(use_calculator(e) == r for e, r in calls)
        assert t.reference_answer(conv) == str(conv["answer"])
        assert t.reward(conv, parts_text(conv["messages"][1]["content"])) == 1.0
        assert t.reward(conv, f"The answer is #### {conv['answer'] - 1}") == 0.0
        assert t.evaluate(conv, f"{conv['answer']}") == 0     # no '####', no credit
        ids, mask = BYTE_TOK.render_conversation(conv, max_tokens=10**6)
        assert {mask[i] for i, x in enumerate(ids) if x == py_id} == {1} and {mask[i] for i, x in enumerate(ids) if x == out_id} == {0}
    assert t[5] == SyntheticArithmetic(300, seed=3)[5] and t[5] != SyntheticArithmetic(300, seed=4)[5]


@pytest.mark.parametrize("mode", ["manual", "tool", "both", "mixed"])
def test_synthetic_spelling(mode):
    t = SyntheticSpelling(200, mode=mode)
    modes = set()
    for conv in t:
        ref = conv["word"].count(conv["letter"])
        assert t.reference_answer(conv) == str(ref)
        calls = _tool_calls(conv)
        assert all(use_calculator(e) == r == str(ref) for e, r in calls)
        modes.add("tool" if calls and "By hand" not in parts_text(conv["messages"][1]["content"]) else "both" if calls else "manual")
        assert t.evaluate(conv, f"#### {ref}") == 1 and t.evaluate(conv, f"#### {ref + 1}") == 0
        BYTE_TOK.render_conversation(conv)
    assert modes == ({"manual", "tool", "both"} if mode == "mixed" else {mode})


def test_identity_and_custom_json(tmp_path):
    ident = IdentityConversations()
    assert len(ident) >= 10 and all(BYTE_TOK.render_conversation(c)[0] for c in ident)
    assert any("nanochat_nb, a small language model trained with the nanochat_nb course" in c["messages"][1]["content"] for c in ident)
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
                      {"role": "user", "content": "e"}, {"role": "assistant", "content": "f"}]}]) + "\n")
    t = CustomJSON(p)
    assert len(t) == 2 and t[1]["messages"][3]["content"] == "f"
    p.write_text(json.dumps([{"role": "assistant", "content": "b"}]) + "\n")
    with pytest.raises(ValueError, match="message 0 should be the user's"): CustomJSON(p)


# ---------------------------------------------------------------- parsing helpers

def test_answer_and_program_extraction():
    assert calculator_parts("a <<2*3=6>>6 b <<6+1=7>>7\n#### 7") == [
        {"type": "text", "text": "a "}, {"type": "python", "text": "2*3"}, {"type": "python_output", "text": "6"},
        {"type": "text", "text": "6 b "}, {"type": "python", "text": "6+1"}, {"type": "python_output", "text": "7"},
        {"type": "text", "text": "7\n#### 7"}]
    assert [extract_answer(s) for s in ["#### 12,345", "x #### -2", "#### .5", "none"]] == ["12345", "-2", ".5", None]
    assert extract_program("x\n```python3\nprint(1)\n```\n```python\nprint(2)\n```") == "print(1)\n"
    assert extract_program("```Python\ndef f(): pass\n```") == "def f(): pass\n"
    assert extract_program("no block") == "no block"


# ---------------------------------------------------------------- downloads and local copies

def test_loaders_download_from_a_hub_layout(http_server, base):
    srv, url = http_server, http_server.url
    chat = lambda *t: [{"role": r, "content": c} for r, c in zip(["user", "assistant"] * 3, t)]
    for i in range(4):
        _hub(srv, "HuggingFaceTB/smol-smoltalk", f"data/train-{i:05d}-of-00004.parquet",
             pa.table({"messages": [chat(f"q{i}.{j}", f"a{i}.{j}") for j in range(3)]}))
    _hub(srv, "HuggingFaceTB/smol-smoltalk", "data/test-00000-of-00001.parquet",
         pa.table({"messages": [[{"role": "system", "content": "be nice"}] + chat("hi", "hello")]}))
    _hub(srv, "cais/mmlu", "all/validation-00000-of-00001.parquet", pa.table({
        "question": ["2+2?"], "subject": ["math"], "choices": [["1", "2", "3", "4"]], "answer": [3]}))
    _hub(srv, "cais/mmlu", "auxiliary_train/train-00000-of-00001.parquet", pa.table({"train": [
        {"question": "Sky color?", "subject": "", "choices": ["red", "blue", "green", "pink"], "answer": 1}]}))
    _hub(srv, "allenai/ai2_arc", "ARC-Challenge/train-00000-of-00001.parquet", pa.table({
        "id": ["x1", "x2"], "question": ["Which is a gas?", "Pick 2"], "answerKey": ["B", "2"],
        "choices": [{"text": ["rock", "air", "wood"], "label": ["A", "B", "C"]},
                    {"text": ["one", "two", "three", "four"], "label": ["1", "2", "3", "4"]}]}))
    _hub(srv, "openai/gsm8k", "socratic/test-00000-of-00001.parquet", pa.table({
        "question": ["How many?"], "answer": ["How much? 5*2 = <<5*2=10>>10\n#### 10"]}))
    _hub(srv, "openai/openai_humaneval", "openai_humaneval/test-00000-of-00001.parquet", pa.table({
        "task_id": ["HumanEval/x"], "prompt": ["def add(a, b):\n    \"\"\"Add.\"\"\"\n"],
        "canonical_solution": ["    return a + b\n"], "test": ["def check(f):\n    assert f(2, 3) == 5\n"], "entry_point": ["add"]}))
    srv.faults["datasets/cais/mmlu/resolve/main/all/validation-00000-of-00001.parquet"] = [503]   # retried

    st = SmolTalk("train", base_url=url)
    assert len(st) == 12 and sorted(c["messages"][0]["content"] for c in st)[:2] == ["q0.0", "q0.1"]
    assert SmolTalk("test", base_url=url)[0]["messages"][0] == {"role": "system", "content": "be nice"}
    assert len(BYTE_TOK.render_conversation(SmolTalk("test", base_url=url)[0])[0]) > 10

    mm = MMLU("all", "validation", base_url=url)
    c = mm[0]
    assert (c["messages"][1]["content"], c["letters"], c["subject"]) == ("D", ["A", "B", "C", "D"], "math")
    assert mm.eval_type == "categorical" and mm.evaluate(c, "D") and not mm.evaluate(c, "B")
    aux = MMLU("auxiliary_train", "train", base_url=url)[0]
    assert aux["messages"][1]["content"] == "B" and "- blue=B" in aux["messages"][0]["content"]

    arc = ARC("ARC-Challenge", "train", base_url=url, shuffle=False)
    assert [c["messages"][1]["content"] for c in arc] == ["B", "2"] and arc[1]["letters"] == ["1", "2", "3", "4"]

    g = GSM8K("socratic", "test", base_url=url)
    assert _tool_calls(g[0]) == [("5*2", "10")] and g.evaluate(g[0], "so #### 10") == 1

    he = HumanEval(base_url=url)
    ex = he[0]
    assert he.evaluate(ex, ex["messages"][1]["content"]) and he.evaluate(ex, "```python\n    return a + b\n```")
    assert not he.evaluate(ex, "    return a - b\n")

    served = list(srv.requests)
    assert served.count("datasets/cais/mmlu/resolve/main/all/validation-00000-of-00001.parquet") == 2
    assert (base / "tasks" / "smoltalk" / "data" / "train-00003-of-00004.parquet").is_file()
    MMLU("all", "validation", base_url=url); SmolTalk("train", base_url=url)
    assert srv.requests == served                                            # cached: no new requests


def test_mirror_from_environment_and_bad_content(http_server, base, monkeypatch):
    (http_server.root / "datasets" / "openai" / "gsm8k" / "resolve" / "main" / "main").mkdir(parents=True)
    (http_server.root / "datasets/openai/gsm8k/resolve/main/main/train-00000-of-00001.parquet").write_text(
        "<!DOCTYPE html><html>rate limited</html>")
    monkeypatch.setenv("NANOCHAT_HF_URL", http_server.url)
    with pytest.raises(DownloadError, match="contents were rejected"): GSM8K("main", "train")
    assert not (base / "tasks" / "gsm8k" / "main" / "train-00000-of-00001.parquet").exists()


def test_offline_error_names_url_and_destination(base):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    with pytest.raises(DownloadError) as e:
        task_files("arc", "allenai/ai2_arc", ["ARC-Easy/test-00000-of-00001.parquet"],
                   base_url=f"http://127.0.0.1:{port}", retries=2, backoff=0.01)
    msg = str(e.value)
    assert f"http://127.0.0.1:{port}/datasets/allenai/ai2_arc/resolve/main/ARC-Easy/test-00000-of-00001.parquet" in msg
    assert "offline" in msg and str(base / "tasks" / "arc" / "ARC-Easy" / "test-00000-of-00001.parquet") in msg


def test_local_override_folder(tmp_path, base, monkeypatch):
    d = tmp_path / "copies"
    (d / "arc").mkdir(parents=True)
    pq.write_table(pa.table({"question": ["Q"], "answerKey": ["A"], "choices": [{"text": ["x", "y"], "label": ["A", "B"]}]}),
                   d / "arc" / "validation-00000-of-00001.parquet")
    monkeypatch.setenv("NANOCHAT_TASKS_DIR", str(d))
    monkeypatch.setenv("NANOCHAT_HF_URL", "http://127.0.0.1:9")      # would fail if anything were downloaded
    assert ARC("ARC-Easy", "validation")[0]["letters"] == ["A", "B"]
    with pytest.raises(FileNotFoundError) as e: ARC("ARC-Easy", "test")
    assert "ARC-Easy/test-00000-of-00001.parquet" in str(e.value) and str(d / "arc") in str(e.value)
    assert "huggingface.co/datasets/allenai/ai2_arc" in str(e.value)
    with pytest.raises(ValueError, match="split='dev'"): ARC("ARC-Easy", "dev")
    with pytest.raises(ValueError, match="subset='auxiliary_train'"): ARC("auxiliary_train", "train")
    assert not (base / "tasks" / "arc").exists()


def test_spellingbee_word_list(http_server, base):
    (http_server.root / "words.txt").write_text("strawberry\nbanana\nHello\nx\nabc123\ncommittee\n")
    words = load_word_list(url=f"{http_server.url}/words.txt")
    assert words == ["strawberry", "banana", "hello", "committee"]
    sb = SpellingBee(50, words=words, mode="tool")
    assert all(c["word"] in words and _tool_calls(c) for c in sb)
    local = base.parent / "wl"; local.mkdir()
    (local / "words_alpha.txt").write_text("apple\n")
    assert SpellingBee(3, data_dir=local)[0]["word"] == "apple"


# ---------------------------------------------------------------- the real evaluation files

def _need(path):
    if not path.exists():
        pytest.skip(f"{path} not found (the shared evaluation data is not next to this checkout)")


def test_gsm8k_real_files():
    _need(SHARED_DATA / "gsm8k" / "train.jsonl")
    out_id = BYTE_TOK.encode_special("<|output_start|>")
    for split, n_rows, n_calls in [("train", 7473, 23716), ("test", 1319, 4282)]:
        t = GSM8K("main", split, data_dir=SHARED_DATA / "gsm8k")
        assert len(t) == n_rows
        calls, bad = 0, []
        for i, conv in enumerate(t):
            for e, r in _tool_calls(conv):
                calls += 1
                if not _number_matches(use_calculator(e), r): bad.append((e, r))
            if i < 200:
                assert t.evaluate(conv, parts_text(conv["messages"][1]["content"])) == 1
                ids, mask = BYTE_TOK.render_conversation(conv, max_tokens=10**6)
                assert all(mask[k] == 0 for k, x in enumerate(ids) if x == out_id)
        assert calls == n_calls
        assert bad == ([] if split == "train" else [("3/4", "3/4")])
    assert len(GSM8K("main", "test", data_dir=SHARED_DATA / "gsm8k", stop=420)) == 420


def test_humaneval_real_file():
    _need(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz")
    he = HumanEval(data_dir=SHARED_DATA / "humaneval", shuffle=False)
    assert len(he) == 164 and he.eval_type == "generative"
    for conv in he[::41]:
        ref = conv["messages"][1]["content"]
        assert he.evaluate(conv, ref), conv["task_id"]
        assert he.evaluate(conv, f"Sure.\n\n```python\n{ref}\n```\nThis works."), conv["task_id"]
        assert not he.evaluate(conv, "    return None\n"), conv["task_id"]
