"""The course is read in JupyterLab: start `jupyter lab` on 127.0.0.1, open a chapter in headless Chromium, run it in a
real kernel (the project's Python), and find its figure and its widget rendered, the widget live, and no error."""
import re, sys, time
from pathlib import Path
import pytest
from jupyter_lab import KERNEL, STATE_JS

pytest.importorskip("jupyterlab", reason="JupyterLab is missing: pip install -e '.[dev]'")
pytest.importorskip("jupyterlab_widgets", reason="ipywidgets' JupyterLab renderer is missing: pip install -e '.[dev]'")
pytest.importorskip("ipykernel", reason="ipykernel is missing: pip install -e '.[dev]'")
nbformat = pytest.importorskip("nbformat", reason="nbformat is missing: pip install -e '.[dev]'")
pytest.importorskip("selenium", reason="selenium is missing: pip install -e '.[dev]'")
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

NBS = Path(__file__).resolve().parents[1] / "nbs"
CHAPTER = "09aa_cpu_tasks.ipynb"   # quick to run (a few seconds on CPU), with a matplotlib figure and an ipywidgets browser
# Cells nbdev_test skips (settings.ini tst_flags, `#| eval: false`) and the export cell (it needs the repository's
# settings.ini, which the temporary copy has not): a reader skips those as well, they are commands, not lessons.
SKIP = re.compile(r"^#\|\s*(eval:\s*false|notest|slow|cuda|multigpu)\b", re.M)
PROBE = "import sys\nprint('kernel python:', sys.executable)"


def chapter_copy(src: Path, dst: Path):
    "The chapter without its stored outputs (all the test sees comes from this run) and with a kernelspec, plus a probe."
    nb = nbformat.read(src, as_version=4)
    nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and (SKIP.search(c.source) or "nbdev_export" in c.source))]
    for c in nb.cells:
        if c.cell_type == "code": c.outputs, c.execution_count = [], None
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nb.metadata.pop("widgets", None)
    # The chapter names its kernel itself: without a kernelspec JupyterLab asks the reader to pick one.
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL, f"{src} has no python3 kernelspec: {nb.metadata}"
    nbformat.write(nb, dst)


def test_chapter_runs_in_jupyterlab(lab, browser, tmp_path):
    src = NBS / CHAPTER
    if not src.exists(): pytest.skip(f"{src} is not built yet (nbsrc/build.sh)")
    chapter_copy(src, lab.root / CHAPTER)
    shot = tmp_path / "jupyterlab.png"

    def fail(what: str):
        try: browser.save_screenshot(str(shot)); text = browser.find_element(By.TAG_NAME, "body").text[-2000:]
        except WebDriverException as e: text = f"(no page: {e})"
        return AssertionError(f"{what}\nscreenshot: {shot}\npage text (end):\n{text}\nserver log (end):\n{lab.log_tail()}")

    def wait(cond, timeout, what):
        "Poll `cond` until truthy; on timeout fail with `what` (a string, or a function giving one, e.g. the last state)."
        def probe(d):
            try: return cond(d)
            except WebDriverException: return False   # the page is still loading, or an element was re-rendered
        try: return WebDriverWait(browser, timeout, poll_frequency=0.25).until(probe)
        except TimeoutException: raise fail(f"after {timeout} s: {what() if callable(what) else what}") from None

    state = lambda d: d.execute_script(STATE_JS, CHAPTER)
    browser.set_window_size(1400, 1000)
    browser.get(f"{lab.url}/lab/tree/{CHAPTER}?token={lab.token}&reset")
    wait(lambda d: (s := state(d)) and s["kernel"] == "idle", 60,
         lambda: f"the notebook opens and its kernel starts (last state: {_safe(state, browser)})")

    t0 = time.monotonic()
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    def finished(d):
        s = state(d)
        if s and s["errors"]: raise fail("a cell raised:\n" + "\n\n".join(s["errors"]))
        return s and s["kernel"] == "idle" and s["running"] == 0 and s["ran"] == s["code"] and s
    s = wait(finished, 90, lambda: f"every code cell runs (last state: {_safe(state, browser)})")
    run_s = time.monotonic() - t0
    assert s["kernelName"] == KERNEL, s

    # No error, nor any traceback printed on stderr, anywhere in the page.
    stderr = [e.text for e in browser.find_elements(By.CSS_SELECTOR,
              '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    assert not [t for t in stderr if "Traceback" in t or "Error" in t], fail(f"stderr output: {stderr}")

    # The kernel is this interpreter.
    probe = wait(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
                            if "kernel python:" in e.text], 10, "the probe cell prints the kernel's interpreter")
    assert probe[-1].split("kernel python:")[1].strip() == sys.executable, fail(f"kernel runs {probe[-1]!r}")

    # The figure: a PNG decoded to a non-empty image.
    imgs = wait(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-RenderedImage img"), 10, "a matplotlib figure renders")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", imgs[0])
    size = wait(lambda d: d.execute_script("const i = arguments[0]; return i.complete && i.naturalWidth > 0 && "
                                            "[i.naturalWidth, i.naturalHeight]", imgs[0]), 10, "the figure's PNG decodes")
    assert size[0] > 100 and size[1] > 50, size

    # The widget: rendered by ipywidgets' JupyterLab manager, not left as "Loading widget..." or its text repr.
    area = wait(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .jupyter-widgets.widget-interact"),
                15, "an output holds the rendered `interactive` widget")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", area)
    handle = wait(lambda d: area.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle"), 15,
                  "the widget renders its slider")[0]
    assert area.find_elements(By.CSS_SELECTOR, ".widget-dropdown select"), fail("the widget has no task dropdown")
    outputs = browser.execute_script("return arguments[0].closest('.jp-OutputArea').innerText", area)
    assert not re.search(r"Loading widget|Error|interactive\(children", outputs), fail(f"widget cell says: {outputs!r}")
    readout = area.find_element(By.CSS_SELECTOR, ".widget-readout")
    shown = lambda d: area.find_element(By.CSS_SELECTOR, ".widget-output").text
    before = wait(shown, 15, "the widget's output shows the first example")
    assert "[user]" in before and "[assistant]" in before, fail(f"widget output: {before!r}")
    assert readout.text.strip() == "0", readout.text

    # Playing with it: the keyboard moves the slider, the kernel answers with another example.
    handle.click()
    handle.send_keys(Keys.ARROW_RIGHT)
    wait(lambda d: readout.text.strip() == "1", 10, f"the arrow key moves the slider (readout {readout.text!r})")
    after = wait(lambda d: (t := shown(d)) != before and "[user]" in t and t, 20,
                 "the widget's output changes to example 1")
    assert after != before
    print(f"run all: {run_s:.1f} s")


def _safe(fn, *a):
    try: return fn(*a)
    except WebDriverException as e: return f"(unavailable: {type(e).__name__})"
