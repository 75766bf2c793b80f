"""The sandbox against its catalogue of attacks (files, secrets, network, processes, resources, forged verdicts,
escapes), each run from an evaluator process of its own against a world set up for it, and the world checked
afterwards: isolated, as CI's user (root) and as an unprivileged user; plus what happens where isolation is missing."""
import json, os, shutil, subprocess, sys, tempfile, textwrap
from pathlib import Path
import pytest

from nanochat_nb.attacks import ATTACKS, run_attack
from nanochat_nb.execution import isolation_problem

REPO = Path(__file__).resolve().parents[1]
needs_isolation = pytest.mark.skipif(isolation_problem() is not None, reason=f"no OS isolation here: {isolation_problem()}")


def test_the_catalogue_is_large_and_covers_every_kind():
    assert len(ATTACKS) >= 60 and len({a.name for a in ATTACKS}) == len(ATTACKS)
    assert {a.kind for a in ATTACKS} == {"files", "secrets", "network", "processes", "resources", "verdict", "escape"}
    assert sum(a.graded for a in ATTACKS) >= 10


@needs_isolation
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: f"{a.kind}:{a.name}")
def test_attack_is_contained(attack):
    o = run_attack(attack, "proxy")
    assert o.contained, f"{attack.name}: {o.breaches} (the program saw: {o.error})"
    if attack.graded: assert o.success is False


@needs_isolation
def test_the_checks_have_teeth():
    "The same world checks catch attacks that the guard alone lets through, so a clean isolated run means something."
    by_name = {a.name: a for a in ATTACKS}
    for name, breach in [("_io.FileIO", "files outside"), ("parent's environ", "secret"),
                         ("TCP to a loopback service", "TCP"), ("posix.kill re-imported", "another process"),
                         ("renice the evaluator", "priority"), ("a daemon left behind", "left running"),
                         ("write 'ok' on every descriptor", "graded as a pass")]:
        o = run_attack(by_name[name], "guard")
        assert any(breach in b for b in o.breaches), (name, o.breaches)
    o = run_attack(by_name["call the reporting function"], "namespaces")    # in-program verdict: forged even isolated
    assert o.breaches == ["a wrong answer was graded as a pass"]


@needs_isolation
def test_catalogue_as_an_unprivileged_user():
    """The whole catalogue again as `nobody`, with the system's Python (a user's Python may live in a home folder
    nobody can read): user namespaces must work without root, and the rlimit on processes now applies too."""
    if os.geteuid() != 0: pytest.skip("needs root to switch to an unprivileged user")
    python, setpriv = "/usr/bin/python3", shutil.which("setpriv")
    if not (setpriv and os.access(python, os.X_OK)): pytest.skip("needs setpriv and /usr/bin/python3")
    work = Path(tempfile.mkdtemp(prefix="nanochat_unpriv_")); os.chmod(work, 0o777)   # pytest's own folders are private
    pkg = work / "nanochat_nb"; pkg.mkdir()
    for f in ("__init__.py", "sandbox.py", "execution.py", "attacks.py"): shutil.copy(REPO / "nanochat_nb" / f, pkg / f); os.chmod(pkg / f, 0o644)
    os.chmod(pkg, 0o755)
    script = work / "run.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        from concurrent.futures import ThreadPoolExecutor
        from nanochat_nb.attacks import ATTACKS, run_attack
        from nanochat_nb.execution import isolation_problem
        assert os.getuid() == 65534, os.getuid()
        if isolation_problem(): print(json.dumps({"problem": isolation_problem()})); sys.exit(0)
        with ThreadPoolExecutor(3) as ex: outs = list(ex.map(lambda a: run_attack(a, "proxy"), ATTACKS))
        print(json.dumps({"ran": len(outs), "breached": {o.attack.name: o.breaches for o in outs if not o.contained}}))
    """)); os.chmod(script, 0o644)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "PYTHONPATH": str(work), "LANG": "C.UTF-8"}
    p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, str(script)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=work)
    shutil.rmtree(work, ignore_errors=True)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert "problem" not in report, f"isolation does not work for an unprivileged user here: {report['problem']}"
    assert report == {"ran": len(ATTACKS), "breached": {}}, report


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_missing_isolation_is_one_clear_line(tmp_path):
    "Without bwrap: a refusal that says why and how to fix it, and a CLI that prints it as one line, no traceback."
    p = _run("from nanochat_nb.execution import execute_code\nexecute_code('print(1)')", PATH=str(tmp_path))
    assert p.returncode != 0 and "SandboxUnavailableError" in p.stderr
    msg = p.stderr.strip().splitlines()[-1]
    for needle in ["bubblewrap", "apt install bubblewrap", "NANOCHAT_SANDBOX=guard-only"]: assert needle in msg, msg
    cli = subprocess.run([sys.executable, "-m", "nanochat_nb.bench", "execution"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PATH": str(tmp_path)})
    assert cli.returncode == 1 and "Traceback" not in cli.stderr, cli.stderr[-2000:]
    assert cli.stderr.startswith("error: cannot isolate model-written code: bubblewrap"), cli.stderr


def test_guard_only_is_opt_in_and_warns_once(tmp_path):
    code = ("from nanochat_nb.execution import execute_code\n"
            "rs = [execute_code('print(7)') for _ in range(3)]\nprint([r.isolated for r in rs], [r.stdout for r in rs])")
    p = _run(code, PATH=str(tmp_path), NANOCHAT_SANDBOX="guard-only")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[False, False, False] ['7\\n', '7\\n', '7\\n']"
    assert p.stderr.count("warning: model-written code runs under the Python guard alone") == 1, p.stderr
    p = _run(code, NANOCHAT_SANDBOX="off")
    assert p.returncode != 0 and "NANOCHAT_SANDBOX='off'" in p.stderr
