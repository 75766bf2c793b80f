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


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "nbs").glob("*.ipynb")), ids=lambda p: p.name)
def test_saved_widgets_show_their_state(path):
    "A widget in a saved chapter is stored with its state (tests/refresh_outputs.py), never as a bare text repr."
    nb = json.loads(path.read_text(encoding="utf-8"))
    state = nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            data = o.get("data", {})
            if WIDGET_VIEW in data:
                assert data[WIDGET_VIEW]["model_id"] in state, f"{path.name} cell {i}: widget saved without its state; run tests/refresh_outputs.py"
            else:
                text = "".join(data.get("text/plain", ""))
                assert not text.startswith(("interactive(children=", "VBox(children=", "HBox(children=")), \
                    f"{path.name} cell {i}: a widget saved as text; run tests/refresh_outputs.py {path.relative_to(path.parents[1])}"
