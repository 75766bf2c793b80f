"""The chapters and solution notebooks as a reader opens them in JupyterLab: each names its kernel (or JupyterLab asks
which one to start), and Run All never starts a full-size job (cells that nbdev_test skips with `#| eval: false` are
commands for a terminal, kept as comments)."""
import json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted([*ROOT.glob("nbs/*.ipynb"), *ROOT.glob("course/solutions/*.ipynb")])
SKIPPED = re.compile(r"^#\|\s*eval:\s*false\s*$", re.M)


def code_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert len([p for p in NOTEBOOKS if p.parent.name == "nbs"]) >= 20 and any(p.parent.name == "solutions" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_names_its_kernel(path):
    spec = json.loads(path.read_text())["metadata"].get("kernelspec", {})
    assert spec.get("name") == "python3" and spec.get("language") == "python", \
        f"{path}: kernelspec {spec!r}; build it with `jupytext --set-kernel python3`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_run_all_starts_no_full_size_job(path):
    for src in code_cells(path):
        if not SKIPPED.search(src): continue
        live = [l for l in src.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        assert not live, f"{path}: an `eval: false` cell would run under Run All in JupyterLab: {live}; comment it out"
