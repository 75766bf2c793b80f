"""The code sandbox: all 164 canonical HumanEval solutions pass, and hostile programs are contained and reported as failures."""
import gzip, json, os, signal, subprocess, sys, tempfile, textwrap, time
from pathlib import Path
import pytest

from conftest import SHARED_DATA
from nanochat_nb.execution import (ExecutionResult, HOSTILE_PROGRAMS, check_humaneval, check_humaneval_many, execute_code,
                                   execute_many, hostile_programs, humaneval_program)

HUMANEVAL = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"


@pytest.fixture(scope="module")
def humaneval():
    if not HUMANEVAL.is_file():
        pytest.skip(f"HumanEval not found at {HUMANEVAL} (the shared evaluation data is not next to this checkout)")
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point tempfile (and so execute_code's working folders) at an empty folder we can inspect afterwards."""
    d = tmp_path / "sandbox_tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def _alive(pid):
    try: return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError): return False


# ---------------------------------------------------------------- HumanEval

def test_all_canonical_humaneval_solutions_pass(humaneval):
    assert len(humaneval) == 164
    t0 = time.monotonic()
    results = check_humaneval_many(humaneval, [p["canonical_solution"] for p in humaneval], workers=4, timeout=20)
    failed = {p["task_id"]: (r.error, r.stderr[-300:]) for p, r in zip(humaneval, results) if not r.success}
    assert failed == {}
    print(f"164 canonical solutions in {time.monotonic() - t0:.1f} s")


def test_wrong_humaneval_completions_fail(humaneval):
    probs = humaneval[:12]
    wrong = check_humaneval_many(probs, ["    return None\n"] * len(probs), workers=4, timeout=10)
    assert [r.success for r in wrong] == [False] * len(probs)
    # the reward hack: exit with status 0 before the tests run
    for completion in ["    import sys; sys.exit(0)\n", "    raise SystemExit\n", "    import os; os._exit(0)\n", "    exit()\n"]:
        r = check_humaneval(humaneval[0], completion)
        assert not r.success and r.error, completion


def test_humaneval_program_layout():
    prob = {"prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    prog = humaneval_program(prob, "    return x + 1\n")
    assert prog.startswith("def f(x):\n    return x + 1\n") and prog.rstrip().endswith("check(f)")
    assert check_humaneval(prob, "    return x + 1\n").success
    with pytest.raises(KeyError, match="lacks"):
        humaneval_program({"prompt": ""}, "")


# ---------------------------------------------------------------- ordinary behaviour

def test_result_fields_and_cleanup(private_tmp):
    r = execute_code("import sys\nprint('out')\nprint('err', file=sys.stderr)\nopen('f.txt', 'w').write('x')")
    assert isinstance(r, ExecutionResult)
    assert (r.success, r.stdout, r.stderr, r.error, r.timeout, r.memory_exceeded) == (True, "out\n", "err\n", None, False, False)
    r = execute_code("raise ValueError('boom')")
    assert not r.success and r.error == "ValueError: boom" and "Traceback" in r.stderr
    r = execute_code("input()")                                   # stdin is empty, not a hang
    assert not r.success and r.error.startswith("EOFError")
    r = execute_code("import sys; sys.stdout.buffer.write(b'\\xff ok')")
    assert r.success and r.stdout.endswith(" ok")                  # undecodable bytes are replaced
    assert list(private_tmp.iterdir()) == []                        # every working folder was removed


def test_bad_arguments():
    with pytest.raises(TypeError, match="must be a str"): execute_code(None)
    with pytest.raises(ValueError, match="timeout"): execute_code("1", timeout=-1)
    with pytest.raises(ValueError, match="64 MiB"): execute_code("1", max_memory_bytes=1000)
    with pytest.raises(ValueError, match="max_output_bytes"): execute_code("1", max_output_bytes=0)


# ---------------------------------------------------------------- hostile programs

@pytest.fixture
def victim(tmp_path):
    d = tmp_path / "victim"
    d.mkdir()
    (d / "sentinel.txt").write_text("still here")
    return d


KILLERS = {"kill the parent", "kill the parent's group"}   # run by test_evaluator_survives_attempts_to_kill_it


@pytest.mark.parametrize("name", [n for n in HOSTILE_PROGRAMS if n not in KILLERS])
def test_hostile_program_is_contained(name, victim, private_tmp):
    prog = hostile_programs(victim / "sentinel.txt", victim)[name]
    t0 = time.monotonic()
    r = execute_code(prog, timeout=2)
    took = time.monotonic() - t0
    assert r.success is False and r.error, (name, r)
    assert took < 2 + 10, f"{name} was not stopped near its deadline ({took:.1f} s)"
    assert (victim / "sentinel.txt").read_text() == "still here"
    assert sorted(p.name for p in victim.iterdir()) == ["sentinel.txt"]
    assert list(private_tmp.iterdir()) == [], "the sandbox's working folder was left behind"
    expected = {"infinite loop": "timeout", "sleep forever": "timeout", "50 GB allocation": "memory_exceeded",
                "50 GB list": "memory_exceeded", "print 1 GB at once": "memory_exceeded", "print 1 GB": "output_truncated"}
    if name in expected: assert getattr(r, expected[name]), (name, r)
    if name == "print 1 GB": assert len(r.stdout) == 2**20
    if name == "sys.exit(0)": assert "sys.exit(0)" in r.error
    if name == "fill the disk": assert "File too large" in r.error


def test_os_system_leaves_no_trace(tmp_path):
    marker = tmp_path / "pwned.txt"
    for prog in [f"import os\nos.system('touch {marker}')", f"import os\nos.popen('touch {marker}')",
                 f"import subprocess\nsubprocess.Popen(['touch', '{marker}'])",
                 f"import os\nos.execv('/usr/bin/touch', ['touch', '{marker}'])",
                 f"import os\nos.posix_spawn('/usr/bin/touch', ['touch', '{marker}'], {{}})"]:
        r = execute_code(prog, timeout=5)
        assert not r.success and "PermissionError" in r.error, prog
    assert not marker.exists()


def test_deleting_outside_is_refused_inside_is_fine(victim):
    s = victim / "sentinel.txt"
    for prog in [f"import os\nos.remove({str(s)!r})", f"import os\nos.unlink({str(s)!r})",
                 f"import pathlib\npathlib.Path({str(s)!r}).unlink()", f"import shutil\nshutil.rmtree({str(victim)!r})",
                 f"import os\nos.rename({str(s)!r}, 'stolen.txt')", f"open({str(s)!r}, 'w').write('overwritten')",
                 f"import os\nos.truncate({str(s)!r}, 0)", f"import os\nos.chmod({str(s)!r}, 0)"]:
        r = execute_code(prog, timeout=5)
        assert not r.success, prog
        assert s.read_text() == "still here", prog
    assert execute_code("import os\nopen('mine.txt', 'w').write('x')\nos.mkdir('d')\nos.rmdir('d')\nos.remove('mine.txt')").success


def test_evaluator_survives_attempts_to_kill_it(tmp_path):
    """Run the evaluator in its own process so that, if containment failed, the victim would be that process (which we
    watch) and not pytest. It runs the parent-killing programs and must report on every one."""
    script = tmp_path / "evaluator.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        from nanochat_nb.execution import execute_code
        from nanochat_nb.execution import HOSTILE_PROGRAMS
        progs = [HOSTILE_PROGRAMS["kill the parent"], HOSTILE_PROGRAMS["kill the parent's group"],
                 "import os, signal\\nos.kill(os.getppid(), signal.SIGTERM)",
                 "import os, signal\\nos.kill(0, signal.SIGKILL)"]
        guards = sys.argv[1] == "guards"
        out = [execute_code(p, timeout=5, guards=guards, isolate=False) for p in progs[:4 if guards else 1]]
        print(json.dumps({"pid": os.getpid(), "results": [[r.success, r.error] for r in out]}))
    """))
    def evaluate(mode):
        # its own session, so pytest is never in the line of fire; its own TMPDIR, because a killed evaluator
        # cannot remove the sandbox's working folder
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        return subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=120,
                              start_new_session=True, env=env)
    p = evaluate("guards")
    assert p.returncode == 0, f"the evaluator died (exit {p.returncode}); stderr:\n{p.stderr}"
    report = json.loads(p.stdout)
    assert len(report["results"]) == 4 and all(ok is False and err for ok, err in report["results"]), report
    # the check has teeth: without the guards the same program does kill its evaluator
    p = evaluate("no-guards")
    assert p.returncode == -signal.SIGKILL and p.stdout == "", (p.returncode, p.stdout)


def test_process_group_is_killed_even_without_guards():
    """With the in-process guards switched off, the process-group layer alone must still clean up: children that the
    program leaves running (on purpose, double-forked, or busy looping) are gone when execute_code returns."""
    prog = textwrap.dedent("""
        import os, time
        pids = []
        for i in range(8):
            pid = os.fork()
            if pid == 0:
                if i % 2:
                    if os.fork() == 0:        # a grandchild that detaches from its parent
                        while True: pass
                    os._exit(0)
                time.sleep(120); os._exit(0)
            pids.append(pid)
        print(*pids, flush=True)
    """)
    r = execute_code(prog, timeout=5, guards=False, isolate=False)
    assert r.success, r
    time.sleep(0.3)
    pids = [int(x) for x in r.stdout.split()]
    assert len(pids) == 8 and [p for p in pids if _alive(p)] == []
    # and at a timeout, while the program itself is still running
    r = execute_code("import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                     "print(p.pid, flush=True)\nwhile True: pass", timeout=1, guards=False, isolate=False)
    assert r.timeout and not r.success
    time.sleep(0.3)
    assert not _alive(int(r.stdout.split()[0]))


def test_cpu_limit_stops_a_busy_loop_that_blocks_signals():
    """A program that ignores SIGXCPU is still stopped: the wall clock, then SIGKILL to the group."""
    r = execute_code("import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True: pass", timeout=1.5)
    assert r.timeout and not r.success


def test_memory_limit_is_a_parameter():
    prog = "x = bytearray(150 * 2**20)\nprint(len(x))"
    assert execute_code(prog, max_memory_bytes=512 * 2**20).success
    r = execute_code(prog, max_memory_bytes=128 * 2**20)
    assert r.memory_exceeded and not r.success


def test_parallel_hostile_and_honest_programs_do_not_interfere():
    progs = ["while True: pass", "print(sum(range(10**6)))", "x = bytearray(50 * 2**30)", "print('ok')"] * 2
    rs = execute_many(progs, workers=4, timeout=2)
    assert [r.success for r in rs] == [False, True, False, True] * 2
    assert rs[1].stdout == "499999500000\n"
