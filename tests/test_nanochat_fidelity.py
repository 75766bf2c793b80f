"""Our code beside nanochat's own, run in the same process: weights and logits, three optimizer steps, checkpoints
written by one and read by the other, greedy decoding with the KV cache and the calculator, and chat rendering.
Needs a nanochat checkout (and its `rustbpe` import): set NANOCHAT_PEER=/path/to/nanochat, otherwise it skips.
    NANOCHAT_PEER=~/nanochat pytest -q tests/test_nanochat_fidelity.py"""
import os, sys
from dataclasses import asdict
from pathlib import Path
import pytest
import torch

PEER = os.environ.get("NANOCHAT_PEER", "")
if not PEER or not (Path(PEER).expanduser() / "nanochat" / "gpt.py").is_file():
    pytest.skip("no nanochat checkout: set NANOCHAT_PEER to one (git clone https://github.com/karpathy/nanochat)",
                allow_module_level=True)
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
sys.path.insert(0, str(Path(PEER).expanduser().resolve()))
try:
    import nanochat.gpt as ngpt, nanochat.checkpoint_manager as nckpt, nanochat.engine as nengine, nanochat.tokenizer as ntok
except ImportError as e:
    pytest.skip(f"nanochat from {PEER} does not import here ({e}); install what it needs (e.g. pip install rustbpe)",
                allow_module_level=True)

from nanochat_nb.gpt import GPT, GPTConfig
import nanochat_nb.optim  # noqa: F401 (adds GPT.setup_optimizer)
from nanochat_nb.checkpoint import load_checkpoint, save_checkpoint
from nanochat_nb.engine import Engine
from nanochat_nb.execution import use_calculator
from nanochat_nb.tokenizer import Tokenizer

CFG = dict(sequence_len=128, vocab_size=512, n_layer=4, n_head=2, n_kv_head=2, n_embd=128, window_pattern="L")


def pair(seed=0, jitter=0.0):
    """Our d4 GPT and nanochat's, with the same weights (ours initialized, copied into theirs with strict loading).
    `jitter` adds noise to every weight, so that no gradient is ~0 (at init the zero output projections give the
    residual scalars gradients of ~1e-10, which Adam with eps 1e-10 turns into rounding-noise-sized full steps)."""
    torch.manual_seed(seed)
    ours = GPT(GPTConfig(**CFG)); ours.init_weights()
    if jitter:
        with torch.no_grad():
            for p in ours.parameters(): p.add_(torch.randn_like(p) * jitter)
    with torch.device("meta"): theirs = ngpt.GPT(ngpt.GPTConfig(**CFG))
    theirs.to_empty(device="cpu"); theirs.init_weights()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours.eval(), theirs.eval()


def test_weights_load_strictly_and_logits_match():
    ours, theirs = pair()
    idx = torch.randint(0, 512, (2, 64))
    with torch.no_grad(): a, b = ours(idx), theirs(idx)
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_three_optimizer_steps_match():
    ours, theirs = pair(1, jitter=0.02)
    ours.train(); theirs.train()
    lrs = dict(unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0, scalar_lr=0.5)  # nanochat's defaults
    o1, o2 = ours.setup_optimizer(**lrs), theirs.setup_optimizer(**lrs)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        idx, tgt = torch.randint(0, 512, (4, 64), generator=g), torch.randint(0, 512, (4, 64), generator=g)
        for m, opt in ((ours, o1), (theirs, o2)):
            loss = m(idx, tgt); loss.backward(); opt.step(); m.zero_grad(set_to_none=True)
    worst = max(((p1 - p2).norm() / p2.norm().clamp_min(1e-12)).item()
                for (n, p1), (_, p2) in zip(ours.named_parameters(), theirs.named_parameters()))
    assert worst < 1e-4, worst


def test_checkpoints_cross_both_ways(tmp_path):
    ours, theirs = pair(2)
    idx = torch.randint(0, 512, (1, 32))
    nckpt.save_checkpoint(str(tmp_path / "theirs"), 5, theirs.state_dict(), None, {"model_config": CFG, "step": 5})
    data, _, meta = load_checkpoint(tmp_path / "theirs", 5, "cpu")
    mine = GPT(GPTConfig(**meta["model_config"])); mine.load_state_dict(data, strict=True)
    save_checkpoint(tmp_path / "ours", 7, ours.state_dict(), None, {"model_config": asdict(ours.config), "step": 7})
    back, _, meta2 = nckpt.load_checkpoint(str(tmp_path / "ours"), 7, "cpu")
    cfg2 = {k: v for k, v in meta2["model_config"].items() if k in ngpt.GPTConfig.__dataclass_fields__}
    with torch.device("meta"): other = ngpt.GPT(ngpt.GPTConfig(**cfg2))
    other.to_empty(device="cpu"); other.init_weights(); other.load_state_dict(back, strict=True)
    with torch.no_grad():
        assert torch.allclose(mine.eval()(idx), theirs(idx), atol=1e-5)
        assert torch.allclose(other.eval()(idx), ours(idx), atol=1e-5)


@pytest.fixture(scope="module")
def tokenizer():
    text = ("The quick brown fox jumps over the lazy dog. 12 + 30 = 42. " * 200 + "".join(chr(c) for c in range(32, 127))) * 2
    return Tokenizer.train_from_iterator(iter([text]), vocab_size=512)


def test_greedy_decoding_with_the_kv_cache_matches(tokenizer):
    ours, theirs = pair(3)
    prompt = [tokenizer.get_bos_token_id()] + tokenizer.encode("The quick brown")
    a = [t for t, _ in Engine(ours, tokenizer).generate(prompt, max_tokens=24, temperature=0.0)]
    b = [t for t, _ in nengine.Engine(theirs, tokenizer).generate(prompt, max_tokens=24, temperature=0.0)]
    assert a == b


@pytest.mark.parametrize("expr", ["1+2", "48/2", "12*4-7", "'strawberry'.count('r')", "6/2", "0.1+0.2", "10%3"])
def test_calculator(expr):
    "Same value; the printed form may differ (ours writes 3 for 6/2 and 0.3 for 0.1+0.2, and allows %)."
    mine, theirs = use_calculator(expr), nengine.use_calculator(expr)
    if theirs is None: assert expr == "10%3" and mine == "1"
    else: assert float(mine) == pytest.approx(float(theirs)), (mine, theirs)


def test_chat_rendering_ids_and_mask(tokenizer):
    peer = ntok.RustBPETokenizer(tokenizer.enc, "<|bos|>")
    conv = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"},
                         {"role": "assistant", "content": [{"type": "text", "text": "12 + 30 = "},
                                                           {"type": "python", "text": "12+30"},
                                                           {"type": "python_output", "text": "42"},
                                                           {"type": "text", "text": "42.\n#### 42"}]},
                         {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]}
    assert tokenizer.render_conversation(conv) == peer.render_conversation(conv)
