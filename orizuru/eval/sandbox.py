"""Run untrusted generated code: one fresh process per program, contained.

What it does (as root, the usual case in containers and CI runners):
- `unshare --net --pid --mount --mount-proc`: a network namespace with only a downed loopback (no
  network at all), a PID namespace (when the program exits or is killed, every process it forked
  dies with it) and a mount namespace in which every mount is re-mounted read-only except a
  throw-away working directory.
- Privileges dropped to an unprivileged uid/gid (a fresh number per run, no supplementary
  groups), so RLIMIT_NPROC is enforced (the kernel ignores it for root): a fork bomb hits it.
- rlimits: CPU seconds, address space (memory bombs get MemoryError), file size, process count,
  open files; a wall-clock timeout kills the whole process group; the environment is replaced by
  a minimal one and the interpreter runs with `-I` (no user site, no PYTHON* variables).

Without root or `unshare` the program still runs in its own session with the rlimits and a
stripped environment, but with network access and write access wherever the user can write: a
warning says so once. What it does not protect against: kernel exploits, side channels, reading
world-readable files (the file system is visible read-only), exhausting host memory through many
concurrent sandboxes.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from itertools import count

# Runs as root inside the new namespaces: read-only mounts, limits, drop privileges, exec.
_LAUNCHER = r"""
import ctypes, os, resource, sys
work, uid, cpu, mem, fsize, nproc, python = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:7]), sys.argv[7]
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
os.execve(python, [python, "-I", "-B", "program.py"], env)
"""

_uids = count()


@dataclass
class Result:
    passed: bool
    status: str  # passed | failed | timeout | error
    returncode: int | None
    stdout: str
    stderr: str


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


def run_program(
    code: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 1024,
    file_size_mb: int = 16,
    max_procs: int = 32,
    output_limit: int = 4096,
) -> Result:
    """Execute `code` as a Python program; passed = exit status 0 within the limits."""
    work = tempfile.mkdtemp(prefix="orizuru-sandbox-")
    try:
        with open(os.path.join(work, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        # the wall clock decides timeouts; the CPU-time limit is a backstop one second later (for
        # programs that burn CPU on several threads), so the two never race on an idle machine
        cpu = math.ceil(timeout) + 1
        if isolation_available():
            uid = 200_000 + (os.getpid() * 64 + next(_uids)) % 100_000
            os.chown(work, uid, uid)
            os.chown(os.path.join(work, "program.py"), uid, uid)
            cmd = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-I", "-c",
                   _LAUNCHER, work, str(uid), str(cpu), str(memory_mb << 20), str(file_size_mb << 20),
                   str(max_procs), _interpreter()]
            preexec = None
        else:
            _warn_unisolated()
            cmd = [sys.executable, "-I", "-B", "program.py"]

            def preexec():  # limits only: no namespaces available
                for res, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, memory_mb << 20),
                                   (resource.RLIMIT_FSIZE, file_size_mb << 20), (resource.RLIMIT_NPROC, max_procs)):
                    resource.setrlimit(res, (value, value))

        proc = subprocess.Popen(
            cmd, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work},
            start_new_session=True, preexec_fn=preexec,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return Result(False, "timeout", None, _clip(out, output_limit), _clip(err, output_limit))
        # killed at the CPU-time limit (SIGXCPU; unshare reports it as 128 + signal) is a timeout too
        cpu_killed = proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
        status = "passed" if proc.returncode == 0 else "timeout" if cpu_killed else "failed"
        return Result(proc.returncode == 0, status, proc.returncode, _clip(out, output_limit), _clip(err, output_limit))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _clip(data: bytes, limit: int) -> str:
    return data[:limit].decode("utf-8", errors="replace")


@lru_cache(maxsize=1)
def _warn_unisolated() -> None:
    warnings.warn(
        "sandbox: not root or no usable `unshare`: generated code runs with rlimits only, "
        "WITH network access and write access to the user's files",
        RuntimeWarning,
        stacklevel=3,
    )


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's check program: the prompt, the completion, the tests, `check(entry_point)`."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"
