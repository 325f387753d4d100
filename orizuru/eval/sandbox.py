"""Run untrusted generated code: one fresh process per program, contained, and a pass the
program cannot fake.

What passes: a program passes only when the harness itself saw it run to the end. Each run gets
a fresh nonce through a pipe; the trusted runner writes it back on a second pipe after the code
has returned, and the run passes only with exit status 0 *and* the nonce back. An early
`os._exit(0)` or `sys.exit(0)`, a thread that exits the process, or printing whatever a pass looks
like all leave the nonce unwritten. A HumanEval check program (`humaneval_program`) goes further:
the tests run in a process of their own (another uid, in isolation another PID namespace) that
calls the completion's function across a pipe, with arguments and results as plain data (None,
bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict; any other type returned
is a failure, so an object whose `__eq__` always says True cannot pass). The completion's process
never holds the nonce, and nothing it patches (`AssertionError`, `builtins`, `sys.exit`) exists in
the tests' process. A plain program (`run_program(code)`) runs in one process: the nonce stops
early exits, but code that searches its own process for the runner's pipes could still fake the
report.

Containment (as root, the usual case in containers and CI runners):
- `unshare --net --pid --mount --mount-proc`: a network namespace with only a downed loopback (no
  network at all), a PID namespace (when the program exits or is killed, every process it forked
  dies with it) and a mount namespace in which every mount is re-mounted read-only except a
  throw-away working directory.
- Privileges dropped to an unprivileged uid/gid (a fresh number per process, no supplementary
  groups), so RLIMIT_NPROC is enforced (the kernel ignores it for root): a fork bomb hits it.
- rlimits: CPU seconds, address space (memory bombs get MemoryError), file size, process count,
  open files; a wall-clock timeout kills the whole process group; the environment is replaced by
  a minimal one and the interpreter runs with `-I` (no user site, no PYTHON* variables).

Without root or `unshare` the program still runs in its own session with the rlimits and a
stripped environment, but with network access, write access wherever the user can write, and
under the same uid as the tests' process (whose pipes it could open through /proc): a warning
says so once. What it does not protect against: kernel exploits, side channels, reading
world-readable files (the file system is visible read-only), exhausting host memory through many
concurrent sandboxes.
"""

from __future__ import annotations

import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import count

# Runs as root inside the new namespaces: read-only mounts, limits, drop privileges, exec the rest of argv.
_LAUNCHER = r"""
import ctypes, os, resource, sys
work, uid, cpu, mem, fsize, nproc, argv = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7]), sys.argv[7:]
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
def mount(src, dst, flags):
    if libc.mount(src, dst.encode(), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), "mount " + dst)
mount(work.encode(), work, MS_BIND)
keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    point, opts = fields[4].replace("\\040", " "), fields[5].split(",")
    if point == work or "ro" in opts:
        continue
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | sum(v for k, v in keep.items() if k in opts)
    try:
        mount(None, point, flags)
    except OSError:
        if point in ("/", "/tmp", "/dev/shm", "/var/tmp") or point.startswith(("/home", "/work", "/root")):
            raise
for res, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, mem), (resource.RLIMIT_FSIZE, fsize),
                   (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(res, (value, value))
os.chdir(work)
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
os.execve(argv[0], argv, env)
"""

# Plain values across the pipe between the tests' process and the completion's, as tagged JSON:
# the decoder builds only these types, so nothing the completion sends can run code or fake equality.
_CODEC = r"""
import json, math
def enc(x):
    t = type(x)
    if x is None or t in (bool, int, str):
        return x
    if t is float:
        return {"f": repr(x)}
    if t is complex:
        return {"c": [repr(x.real), repr(x.imag)]}
    if t is bytes:
        return {"b": x.hex()}
    if t is list:
        return [enc(v) for v in x]
    if t in (tuple, set, frozenset):
        return {{tuple: "t", set: "s", frozenset: "fs"}[t]: [enc(v) for v in x]}
    if t is dict:
        return {"d": [[enc(k), enc(v)] for k, v in x.items()]}
    raise TypeError(f"a {t.__name__} cannot cross the sandbox (plain data only)")
def dec(x):
    if x is None or type(x) in (bool, int, str):
        return x
    if type(x) is list:
        return [dec(v) for v in x]
    (tag, v), = x.items()
    if tag == "f":
        return float(v)
    if tag == "c":
        return complex(float(v[0]), float(v[1]))
    if tag == "b":
        return bytes.fromhex(v)
    if tag in ("t", "s", "fs"):
        return {"t": tuple, "s": set, "fs": frozenset}[tag](dec(i) for i in v)
    if tag == "d":
        return {dec(k): dec(i) for k, i in v}
    raise ValueError("unknown tag " + repr(tag))
"""

# A plain program: exec it, then (only if it returned) send the nonce back. argv: nonce fd, report fd.
_RUN_PROGRAM = r"""
import os, sys
nonce_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
del sys.argv[1:]
code = compile(open("program.py", encoding="utf-8").read(), "program.py", "exec")
exec(code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
os.write(report_fd, os.read(nonce_fd, 64))
"""

# The completion's process: exec prompt + completion, then answer calls from the tests' process.
# argv: request fd, reply fd. It never holds the nonce.
_SERVE_SOLUTION = _CODEC + r"""
import os, sys
requests, replies = int(sys.argv[1]), int(sys.argv[2])
del sys.argv[1:]
ns = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}
exec(compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec"), ns)
out = os.fdopen(replies, "w", encoding="utf-8")
for line in os.fdopen(requests, encoding="utf-8"):
    name, args, kwargs = json.loads(line)
    try:
        reply = ["ok", enc(ns[name](*dec(args), **dec(kwargs)))]
    except Exception as e:
        reply = ["error", type(e).__name__, str(e)[:1000]]
    out.write(json.dumps(reply) + "\n")
    out.flush()
"""

# The tests' process: prompt + tests, the entry point bound to a proxy that calls the completion's
# process, `check(entry point)`, and the nonce back only after check returned.
# argv: request fd, reply fd, nonce fd, report fd, entry point.
_RUN_TESTS = _CODEC + r"""
import builtins, os, sys
requests, replies, nonce_fd, report_fd, entry = *map(int, sys.argv[1:5]), sys.argv[5]
del sys.argv[1:]
nonce = os.read(nonce_fd, 64)
os.close(nonce_fd)
send, receive = os.fdopen(requests, "w", encoding="utf-8"), os.fdopen(replies, encoding="utf-8")
def candidate(*args, **kwargs):
    send.write(json.dumps([entry, enc(list(args)), enc(kwargs)]) + "\n")
    send.flush()
    line = receive.readline()
    if not line:
        raise RuntimeError("the solution's process ended during a call")
    reply = json.loads(line)
    if reply[0] == "ok":
        return dec(reply[1])
    kind = getattr(builtins, str(reply[1]), None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        raise kind(reply[2])
    raise RuntimeError(f"{reply[1]}: {reply[2]}")
candidate.__name__ = entry
ns = {"__name__": "__main__", "__file__": "tests.py", "__builtins__": builtins}
exec(compile(open("tests.py", encoding="utf-8").read(), "tests.py", "exec"), ns)
ns[entry] = candidate  # a test that names the entry point calls the completion's function too
ns["check"](candidate)
os.write(report_fd, nonce)
"""

_uids = count()


@dataclass
class Result:
    passed: bool
    status: str  # passed | failed | timeout | error
    returncode: int | None
    stdout: str
    stderr: str


class CheckProgram(str):
    """HumanEval's check program as text (prompt + completion + tests + `check(entry_point)`), carrying
    its parts so that `run_program` runs the tests apart from the completion."""

    solution: str  # prompt + completion: what runs in the completion's process
    tests: str  # prompt + tests: what runs in the tests' process (the prompt's helpers, e.g. `poly`)
    entry_point: str

    def __new__(cls, prompt: str, completion: str, test: str, entry_point: str) -> CheckProgram:
        self = super().__new__(cls, f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n")
        self.solution, self.tests, self.entry_point = f"{prompt}{completion}\n", f"{prompt}\n\n{test}\n", entry_point
        return self


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> CheckProgram:
    """HumanEval's check program: the prompt, the completion, the tests, `check(entry_point)`."""
    return CheckProgram(prompt, completion, test, entry_point)


@lru_cache(maxsize=1)
def isolation_available() -> bool:
    """True when we are root and `unshare` can create net/pid/mount namespaces here."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return probe.returncode == 0


def _interpreter() -> str:
    # The sandboxed uid must be able to reach the interpreter; a venv under /root is not reachable.
    for path in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if os.access(path, os.X_OK):
            return path
    return sys.executable


@dataclass
class _Limits:
    cpu: int
    memory: int
    file_size: int
    procs: int


class _Process:
    """One contained process (its own namespaces when available) and its drained output."""

    def __init__(self, work: str, files: dict[str, str], script: str, args: list[str], fds: tuple[int, ...],
                 limits: _Limits, output_limit: int):
        for name, text in files.items():
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                f.write(text)
        if isolation_available():
            uid = 200_000 + (os.getpid() * 64 + next(_uids)) % 100_000
            for path in [work, *(os.path.join(work, n) for n in files)]:
                os.chown(path, uid, uid)
            cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-I", "-c",
                   _LAUNCHER, work, str(uid), str(limits.cpu), str(limits.memory), str(limits.file_size),
                   str(limits.procs), _interpreter(), "-I", "-B", "-c", script, *args]
            preexec = None
        else:
            _warn_unisolated()
            cmd = [sys.executable, "-I", "-B", "-c", script, *args]

            def preexec():  # limits only: no namespaces available
                for res, value in ((resource.RLIMIT_CPU, limits.cpu), (resource.RLIMIT_AS, limits.memory),
                                   (resource.RLIMIT_FSIZE, limits.file_size), (resource.RLIMIT_NPROC, limits.procs)):
                    resource.setrlimit(res, (value, value))

        self.proc = subprocess.Popen(
            cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work},
            start_new_session=True, preexec_fn=preexec, pass_fds=fds,
        )
        self.output = {"stdout": b"", "stderr": b""}
        self.readers = [threading.Thread(target=self._drain, args=(name, output_limit), daemon=True)
                        for name in self.output]
        for t in self.readers:
            t.start()

    def _drain(self, name: str, limit: int) -> None:
        stream, kept = getattr(self.proc, name), []
        while chunk := stream.read1(65536):
            if sum(map(len, kept)) < limit:
                kept.append(chunk)
        self.output[name] = b"".join(kept)[:limit]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def finish(self) -> tuple[str, str]:
        for t in self.readers:
            t.join(timeout=5)
        return tuple(self.output[n].decode("utf-8", errors="replace") for n in ("stdout", "stderr"))

    @property
    def cpu_killed(self) -> bool:
        # killed at the CPU-time limit (SIGXCPU; unshare reports it as 128 + signal) is a timeout too
        return self.proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)


def run_program(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_size_mb: int = 16,
    max_procs: int = 32,
    output_limit: int = 4096,
) -> Result:
    """Execute `code` as a Python program; passed = it ran to its end (the nonce came back) with exit
    status 0, within the limits. A `CheckProgram` (from `humaneval_program`) runs its tests in a
    process of their own."""
    # the wall clock decides timeouts; the CPU-time limit is a backstop one second later (for
    # programs that burn CPU on several threads), so the two never race on an idle machine
    limits = _Limits(math.ceil(timeout) + 1, memory_mb << 20, file_size_mb << 20, max_procs)
    nonce = secrets.token_hex(16).encode()
    check = isinstance(code, CheckProgram)
    works = [tempfile.mkdtemp(prefix="orizuru-sandbox-") for _ in range(2 if check else 1)]
    fds: set[int] = set()  # our ends and the children's, each closed exactly once (threads reuse numbers)

    def pipe() -> tuple[int, int]:
        pair = os.pipe()
        fds.update(pair)
        return pair

    def close(*which: int) -> None:
        for fd in which:
            fds.discard(fd)
            os.close(fd)

    procs: list[_Process] = []
    try:
        nonce_r, nonce_w = pipe()
        report_r, report_w = pipe()
        os.write(nonce_w, nonce)
        close(nonce_w)
        if check:
            req_r, req_w = pipe()
            rep_r, rep_w = pipe()
            procs.append(_Process(works[0], {"solution.py": code.solution}, _SERVE_SOLUTION,
                                  [str(req_r), str(rep_w)], (req_r, rep_w), limits, output_limit))
            procs.append(_Process(works[1], {"tests.py": code.tests}, _RUN_TESTS,
                                  [str(req_w), str(rep_r), str(nonce_r), str(report_w), code.entry_point],
                                  (req_w, rep_r, nonce_r, report_w), limits, output_limit))
            close(req_r, req_w, rep_r, rep_w)
        else:
            procs.append(_Process(works[0], {"program.py": code}, _RUN_PROGRAM, [str(nonce_r), str(report_w)],
                                  (nonce_r, report_w), limits, output_limit))
        close(nonce_r, report_w)
        judge = procs[-1]  # the process whose run to the end is the verdict
        try:
            judge.proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        for p in procs:
            p.kill()
        reported = _read_report(report_r) == nonce
        outputs = [p.finish() for p in procs]
        stdout, stderr = "".join(o[0] for o in outputs), "".join(o[1] for o in outputs)
        code_rc = judge.proc.returncode
        if timed_out or any(p.cpu_killed for p in procs):
            return Result(False, "timeout", None if timed_out else code_rc, stdout, stderr)
        passed = code_rc == 0 and reported
        return Result(passed, "passed" if passed else "failed", code_rc, stdout, stderr)
    finally:  # also when a start failed: nothing keeps running, no descriptor stays open
        for p in procs:
            p.kill()
        close(*fds)
        for w in works:
            shutil.rmtree(w, ignore_errors=True)


def _read_report(fd: int) -> bytes:
    """What the judge wrote before it exited (never blocks: a silent run reads as b"")."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 64)
    except BlockingIOError:
        return b""


@lru_cache(maxsize=1)
def _warn_unisolated() -> None:
    warnings.warn(
        "sandbox: not root or no usable `unshare`: generated code runs with rlimits only, "
        "WITH network access and write access to the user's files",
        RuntimeWarning,
        stacklevel=4,
    )
