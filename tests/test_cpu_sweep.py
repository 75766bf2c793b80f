"""`python -m nanochat_nb.cpu_sweep` as a user runs it: an unknown point is one clear line and exit 1, and a sweep
whose points are done reads them (no run) and prints the table and its last line of figures. The sweep's runs
themselves are exercised in deep dive 14b on the tiny preset."""
import json

from conftest import cli_env, run_module


def test_unknown_point_is_one_line(tmp_path):
    p = run_module("cpu_sweep", "--points", "depth 9", "--root", tmp_path, env=cli_env(tmp_path / "base"), check=False)
    assert p.returncode == 1 and "error: --points: unknown point 'depth 9'" in p.stderr and "cpu preset" in p.stderr
    assert "Traceback" not in p.stderr and not any(tmp_path.iterdir())      # nothing was started


def test_done_points_are_read_not_run(tmp_path):
    facts = {f"exam {ph} {s}": v for ph, v in (("sft", 60.0), ("rl", 55.0))
             for s in ("identity", "arithmetic", "letters", "facts", "conversation")}
    for name, minutes in (("cpu preset", 8.5), ("pretrain x2", 16.0)):
        d = tmp_path / name.replace(" ", "_"); d.mkdir()
        (d / "sweep_point.json").write_text(json.dumps(dict(point=name, about="", flags=[], preset="cpu", seed=42,
                                                            minutes=minutes, load=0.2, cpus=2, facts=facts)))
    p = run_module("cpu_sweep", "--points", "cpu preset,pretrain x2", "--root", tmp_path, "--figure", tmp_path / "f.png",
                   env=cli_env(tmp_path / "base"), timeout=120)
    lines = p.stdout.strip().splitlines()
    assert lines[-1] == "sweep: 2 points | best within 10 min: cpu preset (55.0% in 8.5 min) | cpu preset: 55.0% in 8.5 min"
    assert any(l.startswith("| pretrain x2 | 16.0 |") for l in lines) and (tmp_path / "f.png").stat().st_size > 1000
    assert not (tmp_path / "cpu_preset" / "sweep_point.log").exists()        # read, not run
