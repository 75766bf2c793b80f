"""A real JupyterLab for the browser tests: a server on 127.0.0.1 with every Jupyter directory in a temp dir, the
project's interpreter as its kernel, and a probe of the notebook's state as JupyterLab holds it."""
import json, os, secrets, signal, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest

KERNEL = "python3"           # shadows the default spec, so a plain "Python 3" notebook gets the project's interpreter


class Lab:
    "A JupyterLab server in its own session with every Jupyter directory under `tmp`; `stop()` ends it and its kernels."
    def __init__(self, tmp: Path):
        for mod, what in [("jupyterlab", "JupyterLab"), ("jupyterlab_widgets", "ipywidgets' JupyterLab renderer"),
                          ("ipykernel", "ipykernel"), ("psutil", "psutil")]:
            pytest.importorskip(mod, reason=f"{what} is missing: pip install -e '.[dev]'")
        self.root, self.home, self.token = tmp / "root", tmp / "jupyter", secrets.token_hex(16)
        self.root.mkdir()
        dirs = {k: self.home / v for k, v in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                                               ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")]}
        for d in dirs.values(): d.mkdir(parents=True)
        # The kernel is this interpreter, named explicitly (the user data dir comes before the environment's).
        spec = dirs["JUPYTER_DATA_DIR"] / "kernels" / KERNEL
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps(dict(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Python 3 (ipykernel)", language="python")))
        # Quiet and offline: never ask about or fetch news, never check for updates.
        user = dirs["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        user.mkdir(parents=True)
        (user / "notification.jupyterlab-settings").write_text(json.dumps(dict(fetchNews="false", checkForUpdates=False)))
        # Every cell stays in the page: JupyterLab 4 otherwise drops cells scrolled out of view ("windowing"), and the
        # test looks for outputs anywhere in the chapter.
        nb_settings = dirs["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
        nb_settings.mkdir(parents=True)
        (nb_settings / "tracker.jupyterlab-settings").write_text(json.dumps(dict(windowingMode="none")))
        from conftest import SHARED_DATA, cli_env
        env = cli_env(tmp / "base")
        if SHARED_DATA.is_dir():                 # the eval data a reader's cache would hold (offline: seeded, as CI does)
            from nanochat_nb.download import seed_cache
            seed_cache(SHARED_DATA, tmp / "base", verbose=False)
        for k in ("JUPYTER_PATH", "JUPYTER_PREFER_ENV_PATH", "MPLBACKEND", "JPY_SESSION_NAME"): env.pop(k, None)
        env.update({k: str(v) for k, v in dirs.items()})
        self.runtime = dirs["JUPYTER_RUNTIME_DIR"]
        self.log_path = tmp / "jupyterlab.log"
        self.log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", "--port=0",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--ServerApp.terminals_enabled=False", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.geteuid() == 0 else [])
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.url = self._wait_ready(timeout=60)

    def log_tail(self, n=3000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def _wait_ready(self, timeout) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited {self.proc.returncode}:\n{self.log_tail()}")
            for f in self.runtime.glob(f"jpserver-{self.proc.pid}.json"):
                try: url = f"http://127.0.0.1:{json.loads(f.read_text())['port']}"
                except (ValueError, KeyError): continue   # written but not complete yet
                try:
                    with urllib.request.urlopen(f"{url}/api/status?token={self.token}", timeout=5) as r:
                        if r.status == 200: return url
                except OSError: pass
            time.sleep(0.3)
        raise AssertionError(f"jupyter lab did not answer /api/status within {timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc.poll() is None:
            import psutil
            try: kids = psutil.Process(self.proc.pid).children(recursive=True)   # the kernels run in their own sessions
            except psutil.Error: kids = []
            os.killpg(self.proc.pid, signal.SIGTERM)   # the server shuts its kernels down on SIGTERM
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(10)
            for k in kids:
                try: k.kill()
                except psutil.Error: pass
        self.log.close()


@pytest.fixture
def lab(tmp_path):
    server = Lab(tmp_path)
    try: yield server
    finally: server.stop()


# The notebook as JupyterLab holds it: kernel status, how many code cells ran, errors, and whether a run is pending.
STATE_JS = """
const nb = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!nb || !nb.context || nb.context.path !== arguments[0] || !nb.content || !nb.content.model) return null;
const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
const st = {kernel: kernel ? kernel.status : 'none', kernelName: kernel ? kernel.name : null,
            code: 0, ran: 0, errors: [], running: document.querySelectorAll('.jp-Notebook .jp-InputPrompt')};
st.running = Array.from(st.running).filter(p => p.textContent.includes('*')).length;
for (const cell of nb.content.model.cells) {
  if (cell.type !== 'code') continue;
  st.code += 1;
  if (cell.executionCount !== null && cell.executionCount !== undefined) st.ran += 1;
  for (const o of cell.outputs.toJSON())
    if (o.output_type === 'error') st.errors.push(o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).join('\\n'));
}
return st;
"""
