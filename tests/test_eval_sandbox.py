"""The code sandbox contains hostile programs and passes correct ones (JHumanEval 164/164)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orizuru.eval.sandbox import humaneval_program, isolation_available, run_program

ROOT = Path(__file__).resolve().parent.parent
needs_isolation = pytest.mark.skipif(not isolation_available(), reason="needs root and unshare (namespaces)")


def test_correct_program_passes():
    r = run_program("import math\nassert math.gcd(12, 18) == 6\nprint('ok')")
    assert r.passed and r.stdout.strip() == "ok"


def test_infinite_loop_times_out():
    r = run_program("while True:\n    pass", timeout=2)
    assert not r.passed and r.status == "timeout"


@needs_isolation
def test_fork_bomb_is_contained():
    r = run_program("import os\nwhile True:\n    os.fork()", timeout=10)
    assert not r.passed
    assert "BlockingIOError" in r.stderr or "Resource temporarily unavailable" in r.stderr or r.status == "timeout"


def test_memory_bomb_fails():
    r = run_program("x = bytearray(16 * 1024**3)\nprint(len(x))", memory_mb=512)
    assert not r.passed and "MemoryError" in r.stderr


@needs_isolation
def test_writing_outside_the_work_dir_fails(tmp_path):
    # /tmp is world-writable, so only the read-only mount namespace stops this one
    escape = Path(f"/tmp/orizuru-escape-{os.getpid()}")
    r = run_program(f"open({str(escape)!r}, 'w').write('x')")
    assert not r.passed and "Read-only file system" in r.stderr and not escape.exists()
    target = tmp_path / "escaped.txt"
    assert not run_program(f"open({str(target)!r}, 'w').write('x')").passed and not target.exists()
    assert run_program("open('inside.txt', 'w').write('x')\nassert open('inside.txt').read() == 'x'").passed


@needs_isolation
def test_socket_to_a_local_server_fails():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got = []
    server.settimeout(1.5)

    def accept():
        try:
            conn, _ = server.accept()
            got.append(conn.recv(10))
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    r = run_program(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\ns.sendall(b'leak')")
    server.close()
    t.join()
    assert not r.passed and got == []


def test_environment_is_stripped(monkeypatch):
    monkeypatch.setenv("ORIZURU_SECRET", "token")
    r = run_program("import os\nprint(sorted(os.environ))")
    assert r.passed and "ORIZURU_SECRET" not in r.stdout


def test_big_file_is_cut_off():
    r = run_program("open('big', 'wb').write(b'x' * (64 << 20))", file_size_mb=8)
    assert not r.passed


@pytest.mark.slow
def test_jhumaneval_canonical_solutions_all_pass():
    rows = [json.loads(line) for line in open(ROOT / "orizuru" / "data" / "eval" / "jhumaneval" / "jhumaneval.jsonl", encoding="utf-8")]
    assert len(rows) == 164

    def check(r):
        program = humaneval_program(r["prompt"], r["canonical_solution"], r["test"], r["entry_point"])
        return r["task_id"], run_program(program, timeout=20)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(check, rows))
    failed = [(tid, res.stderr[-200:]) for tid, res in results if not res.passed]
    assert failed == []
    # and a wrong solution fails
    r = rows[0]
    assert not run_program(humaneval_program(r["prompt"], "    return False\n", r["test"], r["entry_point"])).passed


def test_without_namespaces_limits_still_apply_and_a_warning_says_so(monkeypatch):
    from orizuru.eval import sandbox

    monkeypatch.setattr(sandbox, "isolation_available", lambda: False)
    sandbox._warn_unisolated.cache_clear()
    with pytest.warns(RuntimeWarning, match="WITH network access"):
        assert run_program("print(1 + 1)").stdout.strip() == "2"
    assert run_program("while True:\n    pass", timeout=2).status == "timeout"
    assert "MemoryError" in run_program("x = bytearray(16 * 1024**3)", memory_mb=512).stderr


def test_cpu_limit_kill_counts_as_timeout():
    """The CPU-time rlimit can fire before the wall clock on an idle machine: both are timeouts."""
    r = run_program("while True:\n    pass", timeout=1.5)
    assert r.status == "timeout" and not r.passed


# ---------------------------------------------------------------- a pass the program cannot fake

PROMPT = 'import math\n\n\ndef add(a: float, b: float) -> float:\n    """a と b の和を返す。"""\n'
TESTS = ("def check(candidate):\n    assert candidate(1, 2) == 3\n    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n"
         "    assert abs(add(2, 2) - 4) < 1e-9  # some tests name the entry point instead of `candidate`\n")
WRONG = "    return 0\n"

# Each completion gets the tests wrong and tries to be scored as a pass anyway. `fools_one_process`:
# whether the same text run as one program (prompt + completion + tests + check, the old harness)
# passes; the early exits fail even there because the nonce never comes back.
ATTACKS = {
    "early os._exit(0)": (WRONG + "import os\nos._exit(0)\n", False),
    "early sys.exit(0)": (WRONG + "import sys\nsys.exit(0)\n", False),
    "sys.exit(0) inside the call": ("    import sys\n    sys.exit(0)\n", False),
    "prints what a pass looks like": (WRONG + "import os, sys\nprint('passed')\nprint('passed', file=sys.stderr)\n"
                                      "sys.stdout.flush()\nos._exit(0)\n", False),
    "a thread exits the process during the tests": (
        "    import time\n    time.sleep(2)\n    return 0\n"
        "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), os._exit(0))).start()\n", False),
    "excepthook exits 0 on the failed assert": (WRONG + "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n", False),
    "patched AssertionError": (WRONG + "import builtins\nbuiltins.AssertionError = type('AssertionError', (BaseException,), {})\n", False),
    "writes guesses into every descriptor": (
        WRONG + "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32 + b'\\n')\n    except OSError:\n        pass\n",
        False),
    "patched builtins (abs)": ("    return 3\nimport builtins\nbuiltins.abs = lambda x: 0\n", True),
    "an object equal to everything": ("    class Any:\n        def __eq__(self, other):\n            return True\n"
                                      "        def __sub__(self, other):\n            return 0\n    return Any()\n", True),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_completion_cannot_fake_a_pass(name):
    completion, fools_one_process = ATTACKS[name]
    program = humaneval_program(PROMPT, completion, TESTS, "add")
    r = run_program(program, timeout=10)
    assert not r.passed and r.status == "failed", (r.status, r.stderr[-500:])
    # the check is not vacuous: the old single-process harness is fooled where expected
    assert run_program(str(program), timeout=10).passed is fools_one_process


def test_a_correct_completion_passes_and_its_output_is_kept():
    r = run_program(humaneval_program(PROMPT, "    print('called')\n    return a + b\n", TESTS, "add"))
    assert r.passed and r.status == "passed" and r.returncode == 0 and r.stdout.count("called") == 3


def test_values_cross_the_process_boundary_exactly():
    prompt = 'def f(x):\n    """x をそのまま返す。"""\n'
    values = "(1, 2.5, -0.0, float('inf'), 1j, b'\\x00x', 'あ', None, True, [1, (2,)], {3: {frozenset({4})}})"
    tests = (f"import math\ndef check(candidate):\n    v = {values}\n    assert candidate(v) == v\n"
             "    assert [type(a) for a in candidate(v)] == [type(a) for a in v]\n"
             "    assert math.copysign(1, candidate(-0.0)) == -1 and math.isnan(candidate(float('nan')))\n"
             "    try:\n        candidate(None, 1)\n    except TypeError:\n        pass\n    else:\n        raise AssertionError\n")
    assert run_program(humaneval_program(prompt, "    return x\n", tests, "f")).passed
    # a type the tests' process cannot rebuild fails instead of crossing
    r = run_program(humaneval_program(prompt, "    return iter([x])\n", "def check(c):\n    assert list(c(1)) == [1]\n", "f"))
    assert not r.passed and "cannot cross the sandbox" in r.stderr


def test_a_plain_program_must_run_to_its_end():
    assert run_program("x = 1\nassert x == 1").passed
    for early in ("import os\nos._exit(0)\nassert False", "import sys\nsys.exit(0)\nassert False",
                  "import os, threading\nthreading.Thread(target=lambda: os._exit(0)).start()\nimport time\ntime.sleep(5)\nassert False"):
        r = run_program(early)
        assert r.returncode == 0 and not r.passed and r.status == "failed"


@needs_isolation
def test_deleting_outside_the_work_dir_fails():
    # a world-writable folder: only the read-only mount namespace stops this one
    folder = Path(tempfile.mkdtemp(prefix="orizuru-victim-"))
    try:
        folder.chmod(0o777)
        (folder / "keep.txt").write_text("x")
        completion = f"    return a + b\nimport shutil\nshutil.rmtree({str(folder)!r})\n"
        r = run_program(humaneval_program(PROMPT, completion, TESTS, "add"))
        assert not r.passed and "Read-only file system" in r.stderr and (folder / "keep.txt").read_text() == "x"
    finally:
        shutil.rmtree(folder)


@needs_isolation
def test_killing_the_parent_fails_and_the_caller_survives():
    code = "    return a + b\nimport os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)\n"
    r = run_program(humaneval_program(PROMPT, code, TESTS, "add"))
    assert not r.passed and os.getppid() > 1  # the test process is still here


def test_no_descriptor_outlives_a_run():
    before = len(os.listdir("/proc/self/fd"))
    run_program(humaneval_program(PROMPT, "    return a + b\n", TESTS, "add"))
    run_program(humaneval_program(PROMPT, "    while True:\n        pass\n", TESTS, "add"), timeout=1)
    run_program("print(1)")
    assert len(os.listdir("/proc/self/fd")) == before
