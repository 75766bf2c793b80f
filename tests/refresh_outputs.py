"""Re-execute chapters and store their outputs with the state of their widgets, so a saved notebook shows each widget
as it was left (JupyterLab renders saved widget state in a trusted notebook).

    OMP_NUM_THREADS=1 python tests/refresh_outputs.py nbs/03_muon.ipynb nbs/09a_tasks.ipynb ...

Cells flagged `#| slow`, `#| cuda`, `#| multigpu`, `#| notest` or `#| eval: false` are not run: they keep the
outputs they have. Run `nbdev_clean` afterwards (settings.ini keeps the `widgets` metadata)."""
import sys, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

SKIP = ("#| slow", "#| cuda", "#| multigpu", "#| notest", "#| eval: false")


def refresh(path: Path, timeout: int = 900) -> float:
    "Execute `path` in its own folder, keeping skipped cells as they were; returns seconds taken."
    nb = nbformat.read(path, as_version=4)
    kept = {}
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and (any(f in c.source for f in SKIP) or "nbdev_export()" in c.source):
            kept[i] = (c.source, c.outputs)
            c.source = ""                                       # an empty cell runs nothing
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                   store_widget_state=True).execute()
    for i, (src, outs) in kept.items(): nb.cells[i].source, nb.cells[i].outputs = src, outs
    nbformat.write(nb, path)
    return time.time() - t0


if __name__ == "__main__":
    if len(sys.argv) < 2: sys.exit(__doc__)
    for p in map(Path, sys.argv[1:]):
        if not p.is_file(): sys.exit(f"error: {p}: no such notebook")
        print(f"{p}: {refresh(p):.0f} s", flush=True)
