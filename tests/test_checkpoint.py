"""A checkpoint writer killed with SIGKILL in the middle of a write leaves the previous checkpoint loadable."""
import os, signal, subprocess, sys, textwrap, time
import torch

from nanochat_nb.checkpoint import find_last_step, list_steps, load_checkpoint, save_checkpoint


def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    d = tmp_path / "base_checkpoints" / "d4"
    good = {"w": torch.arange(10.0)}
    save_checkpoint(d, 100, good, {"opt": torch.zeros(3)}, {"step": 100})
    writer = tmp_path / "writer.py"
    writer.write_text(textwrap.dedent(f"""
        import torch
        from nanochat_nb.checkpoint import save_checkpoint
        big = {{"w": torch.randn(64, 1024, 1024)}}            # 256 MB: takes a while to write
        save_checkpoint({str(d)!r}, 100, big, {{"opt": torch.ones(3)}}, {{"step": 100, "overwritten": True}})
        save_checkpoint({str(d)!r}, 200, big, None, {{"step": 200}})
    """))
    p = subprocess.Popen([sys.executable, str(writer)])
    t0 = time.time()
    while not any(".tmp." in f.name for f in d.iterdir()):   # wait until the writer is inside torch.save
        assert p.poll() is None and time.time() - t0 < 60, "the writer finished or never started writing"
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    # the old step is intact and is still the last complete one
    assert list_steps(d) == [100] and find_last_step(d) == 100
    model, optim, meta = load_checkpoint(d, 100, load_optimizer=True)
    assert torch.equal(model["w"], good["w"]) and torch.equal(optim["opt"], torch.zeros(3)) and meta["step"] == 100
    assert set(meta["files"]) == {"model_000100.pt", "optim_000100_rank0.pt"}        # sizes and hashes, checked on load
    # nothing with a real name is half written (only a dead temp file may remain, which readers ignore)
    named = sorted(f.name for f in d.iterdir() if ".tmp." not in f.name)
    assert named == ["meta_000100.json", "model_000100.pt", "optim_000100_rank0.pt"]
    from nanochat_nb.common import remove_dead_temps                                 # what a resuming run calls first
    assert [f.name for f in remove_dead_temps(d)] and not any(".tmp." in f.name for f in d.iterdir())


def test_older_nanochat_checkpoint_loads_as_the_model_it_was(tmp_path, capsys):
    "A checkpoint without resid_lambdas/x0_lambdas (older nanochat) loads with 1.0 and 0.0, and gives that model's logits."
    import torch
    from dataclasses import asdict
    from nanochat_nb.checkpoint import model_from_checkpoint, save_checkpoint
    from nanochat_nb.gpt import GPTConfig, build_model as new_model
    from nanochat_nb.tokenizer import Tokenizer
    tok = Tokenizer.from_merges([bytes([i]) for i in range(256)])
    tok.save(tmp_path / "tok")
    cfg = GPTConfig(sequence_len=32, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=32, window_pattern="L")
    torch.manual_seed(0)
    m = new_model(cfg, "cpu")
    with torch.no_grad(): m.resid_lambdas.fill_(1.0); m.x0_lambdas.fill_(0.0)
    sd = {k: v for k, v in m.state_dict().items() if k not in ("resid_lambdas", "x0_lambdas")}
    save_checkpoint(tmp_path / "ck", 5, sd, None, dict(step=5, model_config=asdict(cfg), tokenizer_dir=str(tmp_path / "tok")))
    loaded, _, _ = model_from_checkpoint(tmp_path / "ck", 5, "cpu")
    assert "predates resid_lambdas, x0_lambdas" in capsys.readouterr().out
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad(): assert torch.allclose(loaded(ids), m.eval()(ids), atol=1e-5)
