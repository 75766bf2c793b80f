"""Model-level checks of nanochat_nb.gpt beyond the notebook: checkpoint files, dtypes, the fused loss inside the
model, KV-cache decoding on another shape, and the benchmark CLI."""
import os, subprocess, sys
import pytest
import torch

from nanochat_nb.gpt import GPT, GPTConfig, KVCache, build_model, naive_attention, attention, sdpa_attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(seed=0, **kw):
    cfg = dict(sequence_len=256, vocab_size=300, n_layer=4, n_head=4, n_kv_head=2, n_embd=64, window_pattern="SSSL")
    cfg.update(kw)
    torch.manual_seed(seed)
    m = build_model(GPTConfig(**cfg), "cpu")
    with torch.no_grad():                       # move every parameter off its init so no term hides behind a zero
        for p in m.parameters(): p.add_(torch.randn_like(p) * 0.05)
    return m


def test_checkpoint_file_roundtrip(tmp_path):
    m = tiny()
    idx = torch.randint(0, 300, (2, 100))
    path = tmp_path / "model_000001.pt"
    torch.save(m.state_dict(), path)
    with torch.device("meta"): m2 = GPT(GPTConfig(**m.config.__dict__))
    m2.to_empty(device="cpu"); m2.init_weights()
    m2.load_state_dict(torch.load(path, map_location="cpu"), strict=True, assign=True)
    with torch.no_grad(): assert torch.equal(m(idx), m2(idx))


def test_bf16_checkpoint_loads_on_cpu():
    "A GPU run stores its embedding tables in bf16; loading them into an fp32 CPU model gives close logits."
    m = tiny(1)
    sd = {k: (v.bfloat16() if k.startswith(("transformer.wte", "value_embeds")) else v) for k, v in m.state_dict().items()}
    with torch.device("meta"): m2 = GPT(m.config)
    m2.to_empty(device="cpu"); m2.init_weights()
    m2.load_state_dict(sd)
    idx = torch.randint(0, 300, (1, 64))
    with torch.no_grad(): torch.testing.assert_close(m2(idx), m(idx), atol=0.1, rtol=0)


def test_fused_loss_gradients_match_plain_path():
    m = tiny(2)
    idx, tg = torch.randint(0, 300, (2, 96)), torch.randint(0, 300, (2, 96))
    tg[0, :10] = -1
    m.loss_chunk = 40                                # does not divide 192 rows
    m(idx, tg).backward()
    fused = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True); m.fused_loss = False
    loss = m(idx, tg); loss.backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, atol=1e-6, rtol=1e-4, msg=lambda s: f"{n}: {s}")


def test_bf16_activations_forward_and_backward():
    "The compute-dtype path (bf16 activations, fp32 master weights) runs on a CPU and stays close to fp32."
    m = tiny(3)
    idx, tg = torch.randint(0, 300, (2, 64)), torch.randint(0, 300, (2, 64))
    ref = m(idx, tg).item()
    m.cos.data, m.sin.data = m.cos.bfloat16(), m.sin.bfloat16()
    loss = m(idx, tg)
    loss.backward()
    assert abs(loss.item() - ref) < 0.05 * ref
    assert m.lm_head.weight.grad.dtype == torch.float32 and torch.isfinite(m.lm_head.weight.grad).all()


@pytest.mark.parametrize("pattern,n_kv", [("SSSL", 2), ("L", 4), ("SL", 1)])
def test_kv_cache_decode_matches_full_forward(pattern, n_kv):
    m = tiny(4, window_pattern=pattern, n_kv_head=n_kv)
    idx = torch.randint(0, 300, (2, 220))          # S windows are 128 here: shorter than the sequence
    with torch.no_grad():
        full = m(idx)
        cache = KVCache.for_model(m, batch_size=2, seq_len=220)
        out = [m(idx[:, :64], kv_cache=cache)] + [m(idx[:, p:p + 1], kv_cache=cache) for p in range(64, 220)]
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-4, rtol=1e-4)


def test_attention_paths_random_shapes():
    g = torch.Generator().manual_seed(0)
    for T, H, Hkv, D, window in [(1, 2, 1, 8, -1), (7, 4, 2, 8, 2), (130, 3, 3, 16, 127), (130, 6, 2, 16, 128), (64, 2, 1, 32, 0)]:
        q = torch.randn(1, T, H, D, generator=g)
        k, v = torch.randn(1, T, Hkv, D, generator=g), torch.randn(1, T, Hkv, D, generator=g)
        ref = naive_attention(q, k, v, window)
        torch.testing.assert_close(attention(q, k, v, window), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sdpa_attention(q[:, -1:], k, v, window), ref[:, -1:], atol=1e-5, rtol=1e-5)


def test_bench_cli_runs():
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-m", "nanochat_nb.bench", "train", "--depth", "2", "--seq-len", "64",
                        "--batch-size", "2", "--vocab-size", "512", "--steps", "1", "--threads", "1"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("train: ") and "tokens/s" in last and "plain loss path" in last
