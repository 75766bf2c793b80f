"""Checks of nanochat_nb.engine beyond the notebook: cache-vs-naive greedy equality on other shapes, the stream and
batch interfaces (stop tokens, masks, cache limits), tool use through the calculator, and the benchmark CLI."""
import pytest
import torch

from nanochat_nb.engine import Engine, ScriptedGPT, generate_naive, sample_next_token, scripted_gpt
from nanochat_nb.gpt import GPTConfig, build_model
from nanochat_nb.tokenizer import Tokenizer

from conftest import run_module


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_merges([bytes([i]) for i in range(256)])


def tiny(seed=0, **kw):
    cfg = dict(sequence_len=512, vocab_size=256, n_layer=3, n_head=6, n_kv_head=2, n_embd=96, window_pattern="SL")
    cfg.update(kw)
    torch.manual_seed(seed)
    m = build_model(GPTConfig(**cfg), "cpu")
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


@pytest.mark.parametrize("P,n,B,kw", [(3, 12, 1, {}), (135, 20, 4, {}), (40, 10, 2, dict(n_kv_head=6, window_pattern="L")),
                                      (130, 8, 3, dict(n_kv_head=1, n_layer=2))])
def test_greedy_matches_naive(tok, P, n, B, kw):
    m = tiny(P, **kw)
    prompt = torch.randint(0, 256, (P,), generator=torch.Generator().manual_seed(P)).tolist()
    ref = generate_naive(m, prompt, 1, n, temperature=0.0)[0]
    seqs, masks = Engine(m, tok).generate_batch(prompt, B, max_tokens=n, temperature=0.0)
    assert seqs == [prompt + ref] * B
    assert masks == [[0] * P + [1] * n] * B


def test_sampling_seeded_and_same_draws_as_naive(tok):
    m = tiny(1)
    e = Engine(m, tok)
    prompt = list(range(30, 60))
    a = [c for c, _ in e.generate(prompt, 5, max_tokens=10, temperature=1.2, top_k=20, seed=3)]
    b = [c for c, _ in e.generate(prompt, 5, max_tokens=10, temperature=1.2, top_k=20, seed=3)]
    assert a == b
    rows = [list(r) for r in zip(*a)]
    assert rows == generate_naive(m, prompt, 5, 10, temperature=1.2, top_k=20, seed=3)


def test_stream_shapes_and_limits(tok):
    m = tiny(2, sequence_len=64)
    e = Engine(m, tok)
    assert list(e.generate([1, 2, 3], 2, max_tokens=0)) == []
    cols = list(e.generate([1, 2, 3], 3, max_tokens=5, temperature=0.0))
    assert len(cols) == 5 and all(len(c) == 3 and m_ == [1, 1, 1] for c, m_ in cols)
    # max_tokens=None: decode until the cache (sequence_len positions) is full, then one last token from its logits
    cols = list(e.generate(list(range(10)), 1, max_tokens=None, temperature=0.0))
    assert len(cols) == 64 - 10 + 1
    with pytest.raises(ValueError, match="list of token ids"): list(e.generate([], 1))
    with pytest.raises(ValueError, match="num_samples=0"): list(e.generate([1], 0))
    with pytest.raises(ValueError, match="temperature=-0.5"): list(e.generate([1], 1, temperature=-0.5))
    with pytest.raises(ValueError, match="max_tokens=-1"): list(e.generate([1], 1, max_tokens=-1))


def test_top_k_restricts(tok):
    lg = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]]).expand(200, -1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next_token(lg, g, 3.0, top_k=2)[:, 0].tolist()) <= {1, 2}
    assert sample_next_token(lg, g, 0.0)[:, 0].tolist() == [1] * 200


def _chat(tok, text_after):
    sp = tok.encode_special
    conv = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}
    prompt = tok.render_for_completion(conv)
    script = prompt.copy()
    for kind, text in text_after:
        if kind == "py": script += [sp("<|python_start|>")] + tok.encode(text) + [sp("<|python_end|>")]
        else: script += tok.encode(text)
    return prompt, script


def test_tool_output_is_forced_and_masked(tok):
    prompt, script = _chat(tok, [("t", "a"), ("py", "7*6"), ("t", "####b"), ("py", "2+2"), ("t", "### c")])
    e = Engine(scripted_gpt(tok, script), tok)
    (seq,), (mask,) = e.generate_batch(prompt, 1, max_tokens=100, temperature=0.0)
    reply, rmask = seq[len(prompt):], mask[len(prompt):]
    assert tok.decode(reply) == ("a<|python_start|>7*6<|python_end|><|output_start|>42<|output_end|>b"
                                 "<|python_start|>2+2<|python_end|><|output_start|>4<|output_end|> c")
    forced = tok.decode([t for t, k in zip(reply, rmask) if k == 0])
    assert forced == "<|output_start|>42<|output_end|><|output_start|>4<|output_end|>"


def test_refused_expression_forces_nothing(tok):
    prompt, script = _chat(tok, [("py", "open('x')"), ("t", "ok")])
    e = Engine(scripted_gpt(tok, script), tok)
    (seq,), (mask,) = e.generate_batch(prompt, 1, max_tokens=50, temperature=0.0)
    assert tok.decode(seq[len(prompt):]) == "<|python_start|>open('x')<|python_end|>ok"
    assert all(mask[len(prompt):])


def test_stops_on_bos_without_including_it(tok):
    prompt, script = _chat(tok, [("t", "hi")])
    m = scripted_gpt(tok, script)
    m.end_token = tok.get_bos_token_id()
    e = Engine(m, tok)
    cols = list(e.generate(prompt, 2, max_tokens=20, temperature=0.0))
    assert cols[-1][0] == [tok.get_bos_token_id()] * 2 and len(cols) == 3
    seqs, _ = e.generate_batch(prompt, 2, max_tokens=20, temperature=0.0)
    assert seqs == [prompt + tok.encode("hi")] * 2
    assert isinstance(m, ScriptedGPT)


def test_bench_cli():
    p = run_module("bench", "engine", "--depth", "1", "--vocab-size", "512", "--prompt-len", "16", "--max-tokens", "6",
                   "--naive-tokens", "3", "--batch-sizes", "1,2", "--repeats", "1", "--threads", "1", "--device", "cpu")
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("engine: batch 1: decode") and "the naive loop" in last
    bad = run_module("bench", "engine", "--batch-sizes", "x", check=False)
    assert bad.returncode != 0 and "--batch-sizes" in bad.stderr + bad.stdout
