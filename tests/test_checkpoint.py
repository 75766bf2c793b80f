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
    assert torch.equal(model["w"], good["w"]) and torch.equal(optim["opt"], torch.zeros(3)) and meta == {"step": 100}
    # nothing with a real name is half written (only a dead temp file may remain, which readers ignore)
    named = sorted(f.name for f in d.iterdir() if ".tmp." not in f.name)
    assert named == ["meta_000100.json", "model_000100.pt", "optim_000100_rank0.pt"]
