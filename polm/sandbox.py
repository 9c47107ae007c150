"""Run untrusted Python (model-written code) in a child process that cannot hurt the machine.

Layers, each catching what the others miss:
- a fresh temporary working directory, removed afterwards;
- resource limits (setrlimit): address space (memory), CPU seconds, file size, open files, processes;
- a wall-clock timeout, after which the whole process group is killed;
- no network: a new, empty network namespace (unshare CLONE_NEWNET, when the kernel permits it) AND a
  Python audit hook in the child that refuses socket creation/connection/DNS;
- the same audit hook refuses fork/exec/subprocess/kill/ctypes and any write, delete, rename or
  chmod outside the temporary directory;
- when polm runs as root and the interpreter is readable by `nobody`, the child also drops to
  uid/gid 65534, so file permissions and the process limit apply to it.

This is defence in depth for benchmark code, not a security boundary against a determined attacker
(an audit hook can be bypassed by native code; there is no seccomp filter).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
NOBODY = 65534

# Runs in the child before the program: the audit hook that confines it (see module docstring).
GUARD = r'''
import os, runpy, sys
ROOT = os.path.realpath(sys.argv[1])
DENY = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.setuid"}
PATHS = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
         "os.chown": (0,), "os.symlink": (0, 1), "os.link": (0, 1), "os.truncate": (0,), "os.utime": (0,),
         "shutil.rmtree": (0,), "os.removexattr": (0,), "os.setxattr": (0,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path):
    if isinstance(path, int):
        return True  # an already-open descriptor was checked when it was opened
    real = os.path.realpath(os.fsdecode(path))
    return real == ROOT or real.startswith(ROOT + os.sep)

def hook(event, args):
    if event in DENY:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path}")
    elif event in PATHS:
        for i in PATHS[event]:
            if i < len(args) and args[i] is not None and not inside(args[i]):
                raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

program = sys.argv[2]
sys.argv = [program]
sys.addaudithook(hook)
runpy.run_path(program, run_name="__main__")
'''


@dataclass
class SandboxResult:
    status: Literal["passed", "failed", "timeout", "killed"]   # killed: ended by a signal (a limit)
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    pid: int = 0    # the child's process id (its whole session is killed before run_python returns)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class Limits:
    timeout_s: float = 5.0
    memory_mb: int = 1024          # address space
    file_mb: int = 16              # largest file the program may write (also caps its captured output)
    max_processes: int = 32        # effective only for a non-root child
    open_files: int = 64


def run_python(code: str, limits: Limits | None = None) -> SandboxResult:
    """Run `code` as a script in a fresh temp dir under the limits; passed means exit status 0."""
    limits = limits or Limits()
    workdir = Path(tempfile.mkdtemp(prefix="polm-sandbox-"))
    try:
        (workdir / "guard.py").write_text(GUARD)
        (workdir / "program.py").write_text(code)
        drop = _can_drop_privileges()
        if drop:
            os.chown(workdir, NOBODY, NOBODY)
        return _run(workdir, limits, drop)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(workdir: Path, limits: Limits, drop: bool) -> SandboxResult:
    out, err = workdir / "stdout.txt", workdir / "stderr.txt"
    cmd = [sys.executable, "-I", "-B", str(workdir / "guard.py"), str(workdir), str(workdir / "program.py")]
    start = time.monotonic()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe,
                                env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"},
                                preexec_fn=functools.partial(_confine, limits, drop), start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=limits.timeout_s)
            status = "passed" if code == 0 else ("killed" if code < 0 else "failed")
        except subprocess.TimeoutExpired:
            code, status = None, "timeout"
        finally:
            _kill_group(proc)
    seconds = time.monotonic() - start
    return SandboxResult(status, code, _tail(out), _tail(err), seconds, proc.pid)  # type: ignore[arg-type]


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole session (anything it started too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tail(path: Path, limit: int = 4000) -> str:
    data = path.read_bytes() if path.exists() else b""
    return data[-limit:].decode("utf-8", errors="replace")


def _confine(limits: Limits, drop: bool) -> None:
    """In the child, between fork and exec: network namespace, rlimits, then fewer privileges."""
    _new_network_namespace()
    mem = limits.memory_mb * 2**20
    cpu = int(limits.timeout_s) + 1
    for which, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, limits.file_mb * 2**20), (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_NPROC, limits.max_processes), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(which, (value, value))
    if drop:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


@functools.lru_cache(maxsize=1)
def _libc_unshare():
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return libc.unshare


def _new_network_namespace() -> None:
    """An empty network namespace (only a down loopback): as root directly, otherwise inside a new
    user namespace. Silently skipped where the kernel forbids both (the audit hook still applies)."""
    unshare = _libc_unshare()
    if os.geteuid() == 0 and unshare(CLONE_NEWNET) == 0:
        return
    unshare(CLONE_NEWUSER | CLONE_NEWNET)


@functools.lru_cache(maxsize=1)
def network_isolation() -> bool:
    """Whether children get their own network namespace on this machine (reported in docs/tests)."""
    probe = subprocess.run([sys.executable, "-I", "-c", "import socket; print(len(socket.if_nameindex()))"],
                           capture_output=True, text=True, preexec_fn=_new_network_namespace, timeout=30)
    return probe.returncode == 0 and probe.stdout.strip() == "1"   # only `lo` is left


@functools.lru_cache(maxsize=1)
def _can_drop_privileges() -> bool:
    """Root can run the child as nobody only if nobody can execute this interpreter."""
    if os.geteuid() != 0:
        return False

    def become_nobody() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    try:
        probe = subprocess.run([sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=30,
                               preexec_fn=become_nobody, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0
