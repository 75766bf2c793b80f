"""Benchmark CLIs end with a line of figures (ratios against the named peer, measured in the same run)."""
import re
from conftest import run_module


def test_bench_pack_ratio(base_env):
    p = run_module("bench", "pack", "--seconds", "0.3", "--repeats", "2", env={**base_env, "OMP_NUM_THREADS": "1"})
    last = p.stdout.strip().splitlines()[-1]
    m = re.match(r"pack: best-fit ([\d,]+) tokens/s, naive ([\d,]+) tokens/s, speedup ([\d.]+)x", last)
    assert m, last
    assert float(m.group(3)) >= 3.0   # the target: at least 3x the naive packer at T=2048


def test_bench_unknown_name(base_env):
    p = run_module("bench", "nope", env=base_env, check=False)
    assert p.returncode == 2 and "choose one of" in p.stderr and "Traceback" not in p.stderr

def test_bench_course_cli():
    "The course report runs as a console script and ends with its figures line."
    import subprocess, sys
    out = subprocess.run([sys.executable, "-m", "nanochat_nb.bench", "course"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("core path ") and "functions over 80 lines" in last, last
    bad = subprocess.run([sys.executable, "-m", "nanochat_nb.bench", "course", "--nbs", "/nonexistent"], capture_output=True, text=True)
    assert bad.returncode == 1 and "no numbered notebooks" in bad.stderr and "Traceback" not in bad.stderr
