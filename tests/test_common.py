"""What chapter 00 cannot test inside one notebook kernel: torchrun with two processes, and a real wandb run."""
import json, shutil, subprocess, textwrap
import pytest


def test_torchrun_two_processes_gloo(tmp_path, base_env):
    script = tmp_path / "ddp_check.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys, torch, torch.distributed as dist
        from nanochat_nb.common import all_gather_objects, compute_init, compute_cleanup, print0
        ddp, rank, local_rank, world, device = compute_init("cpu")
        t = torch.tensor([float(rank + 1)])
        dist.all_reduce(t)
        print0("world", world)
        with open(sys.argv[1] + f".{rank}", "w") as f:
            json.dump(dict(ddp=ddp, rank=rank, local_rank=local_rank, world=world, backend=dist.get_backend(), total=t.item(),
                           gathered=all_gather_objects({"r": rank})), f)
        compute_cleanup()
    """))
    out = tmp_path / "result"
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun is not on PATH"
    p = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), str(out)], env=base_env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("world 2") == 1  # print0 prints once, not once per rank
    res = [json.loads((tmp_path / f"result.{r}").read_text()) for r in range(2)]
    assert [r["rank"] for r in res] == [0, 1] and all(r["ddp"] and r["world"] == 2 for r in res)
    assert all(r["backend"] == "gloo" and r["total"] == 3.0 for r in res)
    assert all(r["gathered"] == [{"r": 0}, {"r": 1}] for r in res)


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    from nanochat_nb.common import init_wandb, DummyWandb
    run = init_wandb("ci-offline", config={"depth": 4})
    assert not isinstance(run, DummyWandb)
    run.log({"loss": 2.5}, step=1)
    run.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
