"""The code sandbox contains hostile programs and passes correct ones (JHumanEval 164/164)."""

from __future__ import annotations

import json
import os
import socket
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
