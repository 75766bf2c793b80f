"The package's metadata: extras a reader can choose from, nothing listed twice, a license file that matches."
import configparser, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _cfg():
    c = configparser.ConfigParser(); c.read(ROOT / "settings.ini"); return c["DEFAULT"]

def _name(req: str) -> str: return re.split(r"[<>=!~\[ ]", req, 1)[0].lower().replace("_", "-")

def test_extras_are_split_by_reader():
    cfg = _cfg()
    for key in ("requirements", "course_requirements", "hf_requirements", "gpu_requirements", "dev_requirements"):
        assert cfg.get(key, "").split(), f"settings.ini has no {key}"
    course = {_name(r) for r in cfg["course_requirements"].split()}
    assert {"jupyterlab", "ipywidgets"} <= course
    assert not course & {"pytest", "selenium", "openai", "httpx", "pytest-xdist"}, "test-only packages in the course extra"

def test_no_package_listed_twice():
    cfg = _cfg()
    base = [_name(r) for r in cfg["requirements"].split()]
    assert len(base) == len(set(base)), f"requirements lists a package twice: {base}"
    for key in ("course_requirements", "hf_requirements", "gpu_requirements", "dev_requirements"):
        extra = [_name(r) for r in cfg[key].split()]
        assert len(extra) == len(set(extra)), f"{key} lists a package twice"
        assert not set(extra) & set(base) - {"fastcore"}, f"{key} repeats base requirements: {set(extra) & set(base)}"

def test_setup_declares_every_extra():
    out = subprocess.run([sys.executable, "-c", "import setuptools, sys; sys.argv=['setup.py','--version']; "
                          "import runpy; runpy.run_path('setup.py')"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    src = (ROOT / "setup.py").read_text()
    for extra in ("course", "hf", "gpu", "dev"): assert f"'{extra}':" in src

def test_license_file_matches_metadata():
    lic = (ROOT / "LICENSE").read_text()
    assert _cfg()["license"].lower() == "mit" and lic.startswith("MIT License")
    assert "nanochat_nb contributors" in lic
