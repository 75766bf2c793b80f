"""`python -m nanochat_nb.export` as a user runs it, and the folder it writes as other tools use it: transformers in a
process where nanochat_nb cannot be imported and the network is off (logits, greedy `generate()` against the Engine),
the tokenizer on a megabyte of mixed text, the chat template on 50 conversations with calculator calls, lm-eval's
`hf` model on a multiple-choice task written here, the way back into nanochat_nb, and the one-line message when the
`hf` extra is missing."""
import inspect, json, os, random, subprocess, sys
from dataclasses import asdict
from pathlib import Path
import pytest
import torch

from conftest import SHARED_DATA, cli_env, run_module
from nanochat_nb.checkpoint import load_model, save_checkpoint
from nanochat_nb.dataset import OBJECTS, PLACES, synthetic_shard_texts
from nanochat_nb.engine import Engine
from nanochat_nb.evaluate import continuation_spans, evaluate_task, forward_model, render_prompts_mc, stack_sequences
from nanochat_nb.export import import_hf_folder, load_hf_folder
from nanochat_nb.gpt import GPTConfig, build_model
from nanochat_nb.tasks import calculator_parts
from nanochat_nb.cpu_tasks import SyntheticArithmetic
from nanochat_nb.tokenizer import SPECIAL_TOKENS, Tokenizer

pytest.importorskip("transformers", reason="the hf extra is not installed: pip install -e '.[hf]'")
OFFLINE = dict(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")

UNICODE = ("Grüße aus Köln, 東京タワー！ naïve café — ½ ∑ 😀 👍🏽 👩‍👩‍👧 \u00a0nbsp\u2003em\u3000ideographic \u0085nel \t tab\r\n"
           " crlf  ١٢٣ ๑๒ Ⅷ x² Привет мир Ελληνικά हिन्दी 한국어 עברית ไทย e\u0301 \u200bzero-width ")
LOOK_ALIKES = "<|bos| <|Bos|> < |bos|> <|bos |> <|bos> <||> <|> |user_end|> <|assistant_start <|python_start|x <|output_end| >"
EXACT = "".join(SPECIAL_TOKENS) + " text<|python_start|>2+2<|python_end|><|output_start|>4<|output_end|> "


def python_sources() -> str:
    "The package's own source code: a few hundred kilobytes of Python."
    import nanochat_nb
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(nanochat_nb.__file__).parent.glob("*.py")))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tokenizer trained on prose, code and other scripts, a nudged d2 GPT (grouped keys, windows SL) saved as an SFT
    checkpoint, and its folder written by the command line. The rows of `lm_head` for the 9 special tokens are zero, so
    their logits are 0 and greedy decoding (whose best token always scores above 0) never stops or calls the
    calculator: the Engine and `generate()` then both produce all 64 tokens."""
    base = tmp_path_factory.mktemp("export") / "base"
    docs = synthetic_shard_texts(0, 300_000) + [python_sources()[:300_000], UNICODE * 50]
    tok = Tokenizer.train_from_iterator(iter(docs), 2048)
    tok.save(base / "tokenizer")
    cfg = GPTConfig(sequence_len=256, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                    window_pattern="SL")
    torch.manual_seed(0)
    model = build_model(cfg, "cpu").eval()
    with torch.no_grad():
        for p in model.parameters(): p.add_(0.1 * torch.randn_like(p))
        model.lm_head.weight[[tok.encode_special(s) for s in SPECIAL_TOKENS]] = 0
    save_checkpoint(base / "chatsft_checkpoints" / "d2", 7, model.state_dict(), None,
                    dict(step=7, model_config=asdict(cfg), tokenizer_dir=str(base / "tokenizer"), max_seq_len=256))
    out = base / "folder"
    p = run_module("export", "-i", "sft", "-o", out, env=cli_env(base), timeout=300)
    assert f"exported to {out}" in p.stdout
    return dict(base=base, tok=tok, model=model, cfg=cfg, folder=out)


def hf_env(base) -> dict:
    "The CLI environment, offline, with transformers' module cache inside the test's folder."
    return {**cli_env(base), **OFFLINE, "HF_HOME": str(base / "hf_home")}


WITHOUT_NANOCHAT = r'''
import json, sys
sys.modules["nanochat_nb"] = None                      # any import of the package now fails
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, ids, prompts, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(folder)      # no trust_remote_code: transformers asks, stdin is empty, "no" is fine
with torch.no_grad(): logits = model(torch.tensor([ids])).logits[0]
gen = [model.generate(torch.tensor([p]), max_new_tokens=64, do_sample=False)[0, len(p):].tolist() for p in prompts]
chat = tok.apply_chat_template([{"role": "user", "content": "What is 6 times 7?"}], add_generation_prompt=True,
                               tokenize=True, return_dict=False)
try:
    import nanochat_nb
    imported = True
except ImportError: imported = False
with open(out, "w") as f:
    json.dump(dict(logits=logits.tolist(), gen=gen, chat=chat, text=tok("Sam has 3 apples.").input_ids, imported=imported), f)
'''


def test_transformers_without_nanochat_nb(exported, tmp_path):
    "Logits on a 300-token row (grouped keys, windows of 128 and 256 both cutting) to 1e-5; 64 greedy tokens on 3 prompts = the Engine's."
    tok, model = exported["tok"], exported["model"]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, tok.get_vocab_size(), (300,), generator=g).tolist()
    prompts = [tok.encode("Sam has 3 apples and buys 4 more.", prepend="<|bos|>"),
               tok.render_for_completion(SyntheticArithmetic(3, seed=5).get_example(0)),
               tok.encode("def add(a, b):\n    return", prepend="<|bos|>")]
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, "-c", WITHOUT_NANOCHAT, str(exported["folder"]), json.dumps(ids), json.dumps(prompts), str(out)],
                       env=hf_env(exported["base"]), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["imported"] is False
    with torch.no_grad(): want = model(torch.tensor([ids]))[0]
    assert (torch.tensor(got["logits"]) - want).abs().max().item() <= 1e-5
    engine = Engine(model, tok)
    for prompt, gen in zip(prompts, got["gen"]):
        rows, _ = engine.generate_batch(prompt, max_tokens=64, temperature=0)
        assert len(gen) == 64 and rows[0][len(prompt):] == gen
    chat = {"messages": [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": ""}]}
    assert got["chat"] == tok.render_for_completion(chat)
    assert got["text"] == tok.encode("Sam has 3 apples.", prepend="<|bos|>")


def mixed_text() -> str:
    "Over a megabyte: the embedded corpus's prose, Python source, many scripts and spaces, look-alikes, exact special tokens."
    prose = "\n\n".join(synthetic_shard_texts(3, 450_000))
    text = prose + python_sources()[:400_000] + UNICODE * 400 + LOOK_ALIKES * 300 + EXACT * 200
    assert len(text.encode("utf-8")) >= 1_000_000
    return text


def first_difference(a, b):
    if a == b: return None
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return i, a[max(0, i - 3):i + 3], b[max(0, i - 3):i + 3]


def test_tokenizer_megabyte(exported):
    import tokenizers
    from transformers import AutoTokenizer
    tok, folder = exported["tok"], exported["folder"]
    text = mixed_text()
    want = tok.encode(text)
    raw = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    raw.encode_special_tokens = True                               # special-token text is text, as in nanochat_nb
    assert first_difference(raw.encode(text, add_special_tokens=False).ids, want) is None
    auto = AutoTokenizer.from_pretrained(folder)
    assert first_difference(auto(text, add_special_tokens=False, split_special_tokens=True).input_ids, want) is None
    plain = text
    for s in SPECIAL_TOKENS: plain = plain.replace(s, "")
    assert first_difference(auto(plain).input_ids, tok.encode(plain, prepend="<|bos|>")) is None   # the default: bos first
    assert auto("<|user_start|>", add_special_tokens=False).input_ids == [tok.encode_special("<|user_start|>")]
    assert auto.decode(want) == text


def conversations() -> list[dict]:
    "50 GSM8K-style conversations with calculator parts (and real GSM8K ones when the shared copy is there)."
    convs = [SyntheticArithmetic(40, seed=3).get_example(i) for i in range(40)]
    for i in range(10):
        c = SyntheticArithmetic(10, seed=4).get_example(i)
        if i % 3 == 0: c["messages"].insert(0, {"role": "system", "content": "Show your work, then the answer after ####."})
        if i % 3 == 1: c["messages"] += [{"role": "user", "content": "Danke! Und 10 mehr? 🙂"},
                                         {"role": "assistant", "content": "Dann sind es 10 mehr.\n#### 10"}]
        if i % 3 == 2: c["messages"][1]["content"] = "".join(p["text"] for p in c["messages"][1]["content"])
        convs.append(c)
    gsm = SHARED_DATA / "gsm8k" / "test.jsonl"
    if gsm.is_file():
        rows = [json.loads(l) for l in gsm.read_text(encoding="utf-8").splitlines()[:50]]
        convs += [{"messages": [{"role": "user", "content": r["question"]},
                                {"role": "assistant", "content": calculator_parts(r["answer"])}]} for r in rows]
    return convs


def test_chat_template_equals_render_conversation(exported):
    from transformers import AutoTokenizer
    tok = exported["tok"]
    auto = AutoTokenizer.from_pretrained(exported["folder"])
    convs = conversations()
    assert len(convs) >= 50 and sum(any(isinstance(m["content"], list) for m in c["messages"]) for c in convs) >= 40
    for c in convs:
        assert auto.apply_chat_template(c["messages"], tokenize=True, return_dict=False) == tok.render_conversation(c, 10**9)[0]
        assert auto.apply_chat_template(c["messages"][:-1], tokenize=True, add_generation_prompt=True, return_dict=False) \
            == tok.render_for_completion(c)


def mc_items(tok, n: int = 24, seed: int = 0) -> list[dict]:
    """Questions with 4 choices of 1-4 words. CORE scores the tokens after the choices' common prefix, lm-eval the tokens
    after the question: kept are items where the two are the same tokens (no two choices start with the same token)."""
    r, items = random.Random(seed), []
    while len(items) < n:
        firsts = r.sample(PLACES, 4)
        choices = [f + r.choice(["", " by the " + r.choice(PLACES), " near the old " + r.choice(PLACES)]) for f in firsts]
        item = dict(query=f"Question: where did {r.choice(['Mia', 'Leo', 'Omar', 'Yuki'])} find the {r.choice(OBJECTS)}?",
                    choices=choices, gold=r.randrange(4))
        prompts = render_prompts_mc(item, "\nAnswer: ")
        tokens, starts, ends = continuation_spans(tok, prompts, "multiple_choice")
        context = len(tok.encode(item["query"] + "\nAnswer:", prepend="<|bos|>"))
        if all(s == context for s in starts): items.append(item)
    return items


TASK_YAML = """task: core_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: " "
process_results: !function core_rule.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_core
    aggregation: mean
    higher_is_better: true
"""

CORE_RULE = '''"CORE's rule next to lm-eval's: the choice with the lowest mean loss per continuation token."
from tokenizers import Tokenizer
TOK = Tokenizer.from_file({tokenizer!r})

def process_results(doc, results):
    lls = [ll for ll, _ in results]
    context = len(TOK.encode(doc["query"] + "\\nAnswer:").ids)
    n = [len(TOK.encode(doc["query"] + "\\nAnswer: " + c).ids) - context for c in doc["choices"]]
    by_sum = max(range(len(lls)), key=lambda i: lls[i])
    by_mean = max(range(len(lls)), key=lambda i: lls[i] / n[i])
    return {{"acc": float(by_sum == doc["gold"]), "acc_core": float(by_mean == doc["gold"])}}
'''


def test_lm_eval_scores_like_core(exported, tmp_path):
    "lm-eval's `hf` model on the folder: CORE's rule gives evaluate_task's accuracy, each choice's log-likelihood the project's."
    pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install -e '.[hf]'")
    tok, model, folder = exported["tok"], exported["model"], exported["folder"]
    items = mc_items(tok)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items), encoding="utf-8")
    (tasks / "core_mc.yaml").write_text(TASK_YAML.format(data=tasks / "items.jsonl"), encoding="utf-8")
    (tasks / "core_rule.py").write_text(CORE_RULE.format(tokenizer=str(folder / "tokenizer.json")), encoding="utf-8")
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={folder},trust_remote_code=True,dtype=float32", "--tasks", "core_mc", "--include_path", str(tasks),
           "--device", "cpu", "--batch_size", "8", "--output_path", str(tmp_path / "out"), "--log_samples"]
    p = subprocess.run(cmd, env=hf_env(exported["base"]), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["core_mc"]
    samples = [json.loads(l) for l in next((tmp_path / "out").rglob("samples_core_mc_*.jsonl")).read_text().splitlines()]
    meta = dict(task_type="multiple_choice", num_fewshot=0, continuation_delimiter="\nAnswer: ")
    core = evaluate_task(model, tok, items, "cpu", meta)
    assert results["acc_core,none"] == pytest.approx(core, abs=1e-6)   # the same items right (core is a float32 mean)
    bos = tok.get_bos_token_id()
    for s in samples:
        item = items[s["doc_id"]]
        tokens, starts, ends = continuation_spans(tok, render_prompts_mc(item, "\nAnswer: "), "multiple_choice")
        losses, _ = forward_model(model, stack_sequences(tokens, bos))
        ours = [-losses[i, a - 1:b - 1].sum().item() for i, (a, b) in enumerate(zip(starts, ends))]
        theirs = [float(ll) for ll, _ in s["filtered_resps"]]
        assert ours == pytest.approx(theirs, abs=1e-4)


def test_the_way_back(exported, tmp_path):
    "The folder as nanochat_nb's GPT and Tokenizer, and as an imported checkpoint the scripts load by phase and tag."
    model, tok, meta = load_hf_folder(exported["folder"])
    ids = torch.tensor([exported["tok"].encode("Mia has 12 pencils.", prepend="<|bos|>")])
    with torch.no_grad(): assert torch.equal(model(ids), exported["model"](ids))
    assert tok.enc._mergeable_ranks == exported["tok"].enc._mergeable_ranks and (meta["phase"], meta["step"]) == ("sft", 7)
    d = import_hf_folder(exported["folder"], "sft", "imported", base_dir=tmp_path)
    m2, t2, meta2 = load_model("sft", "cpu", model_tag="imported", base_dir=tmp_path)
    prompt = t2.render_for_completion(SyntheticArithmetic(2, seed=9).get_example(0))
    want, _ = Engine(exported["model"], exported["tok"]).generate_batch(prompt, max_tokens=16, temperature=0)
    assert Engine(m2, t2).generate_batch(prompt, max_tokens=16, temperature=0)[0] == want
    assert (d.name, meta2["step"], meta2["max_seq_len"]) == ("imported", 7, 256)
    p = run_module("chat_cli", "-i", "sft", "-g", "imported", "-p", "What is 2 + 3?", "-t", "0", "--max-tokens", "8",
                   "--device-type", "cpu", env=cli_env(tmp_path), timeout=300)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr[-2000:]           # the imported checkpoint answers in the terminal


MISSING = """import runpy, sys
sys.modules["safetensors"] = None
sys.argv = ["export", "-i", "sft"]
runpy.run_module("nanochat_nb.export", run_name="__main__")
"""


def test_missing_extra_is_one_line(exported):
    p = subprocess.run([sys.executable, "-c", MISSING], env=cli_env(exported["base"]), capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip() == ("error: export needs the safetensors package: pip install transformers safetensors lm-eval "
                                "accelerate (the hf extra of nanochat_nb)")


@pytest.mark.parametrize("args,msg", [(["-i", "rl"], "no model tags"), (["-g", "d9"], "d9"),
                                      (["--dtype", "int8"], "--dtype 'int8'"), (["--from", "/nonexistent"], "no config.json"),
                                      (["-o", "{base}/tokenizer"], "is not an exported nanochat_nb folder")])
def test_cli_errors(exported, monkeypatch, args, msg):
    "Each mistake is a ValueError or FileNotFoundError (which the command line prints as one line) naming the flag or file."
    from nanochat_nb.export import main
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(exported["base"]))
    with pytest.raises((ValueError, FileNotFoundError, FileExistsError), match=None) as e:
        main.cli([a.format(base=exported["base"]) for a in args])
    assert msg in str(e.value)
