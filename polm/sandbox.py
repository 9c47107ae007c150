"""Run untrusted Python (model-written code) and then its trusted tests in a child process that cannot
hurt the machine, and that cannot fake a pass.

What a pass means: exit status 0 AND a random per-run sentinel (secrets.token_hex) came back on a
separate report pipe. The harness in the child reads the sentinel and the tests from stdin before the
program runs, runs the program in its own `__main__` namespace, restores every module the program may
have monkey-patched, runs the tests in a fresh namespace (pristine builtins; the program's names, except
ones that shadow a builtin), and only then writes the sentinel. An exit, SystemExit, os._exit or any
BaseException before that is a failure; the sentinel lives only in the audit hook's closure, so the
program can neither read it nor print it (docs/rl.md, "Code sandbox: what a pass means").

Layers, each catching what the others miss:
- a fresh temporary working directory, removed afterwards;
- resource limits (setrlimit): address space (memory), CPU seconds, file size, open files, processes;
- a wall-clock timeout, after which the whole process group is killed;
- no network: a new, empty network namespace (unshare CLONE_NEWNET, when the kernel permits it) AND a
  Python audit hook in the child that refuses socket creation/connection/DNS;
- the same audit hook refuses fork/exec/subprocess/kill/ctypes, any write, delete, rename or chmod
  outside the temporary directory, reading /proc or data files outside it, and every way to reach
  the harness's frames or objects (sys._getframe, tracebacks' frames, settrace/setprofile, gc,
  further audit hooks); signal handlers and threads are disabled before the program starts;
- when polm runs as root and the interpreter is readable by `nobody`, the child also drops to
  uid/gid 65534, so file permissions and the process limit apply to it.

This is defence in depth for benchmark code and RL rewards, not a security boundary against a
determined attacker (an audit hook can be bypassed by native code; there is no seccomp filter).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hmac
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
NOBODY = 65534

# Runs in the child: reads the tests and the run's secret from stdin, confines the process with an
# audit hook, runs the program, then the tests in their own namespace, and only then hands the secret
# to the report pipe (see module docstring). The secret lives only in the hook's closure; the tests and
# their namespace only in main()'s frame, which the program cannot reach (frame, gc and tracing
# introspection are refused, signal handlers and threads removed).
HARNESS = r"""
import builtins, os, sys, types
import collections, copy, math, random, re, signal, string, threading, typing, _imp, _signal, _thread

NEUTERED = ((signal, ("signal", "set_wakeup_fd", "pidfd_send_signal")),
            (_signal, ("signal", "set_wakeup_fd", "pidfd_send_signal")),
            (_thread, ("start_new_thread", "start_new")), (threading, ("_start_new_thread",)))


def make_hook(root, secret, report, main_frame, tools):
    # Called with private globals (a copy of builtins), so nothing the program patches reaches it; the
    # secret and the original module loaders exist only in this closure, held only by the interpreter.
    getframe, write, realpath, fsdecode, path_roots, frame_codes, loaders = tools
    deny = frozenset({
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
        "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.setuid",
        "sys.addaudithook", "sys.settrace", "sys.setprofile", "sys._current_frames", "sys._current_exceptions",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "signal.pthread_kill"})
    frame_attrs = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
    blocked = frozenset({"_imp", "_signal", "_thread", "_posixsubprocess", "_ctypes", "ctypes", "_testcapi",
                         "_testinternalcapi", "_testbuffer", "_testmultiphase", "_testimportmultiple",
                         "_testsinglephase", "_xxsubinterpreters", "_xxinterpchannels", "_xxtestfuzz", "xxsubtype"})
    paths = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
             "os.chown": (0,), "os.symlink": (0, 1), "os.link": (0, 1), "os.truncate": (0,), "os.utime": (0,),
             "shutil.rmtree": (0,), "os.removexattr": (0,), "os.setxattr": (0,)}
    write_flags = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000          # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND
    data_suffixes = (".json", ".jsonl", ".gz", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".pkl",
                     ".pickle", ".npy", ".npz", ".zst", ".xz", ".bz2", ".zip", ".tar")
    devices = frozenset({"/dev/null", "/dev/urandom", "/dev/random", "/etc/localtime"})
    state = {"trusted": False, "done": False, "busy": False}

    def under(real, top):
        return real == top or real.startswith(top + "/")

    def inside(path):
        return isinstance(path, int) or under(realpath(fsdecode(path)), root)

    def readable(path):   # the working dir, devices, and code (not data) where imports come from
        if isinstance(path, int):
            return True
        real = realpath(fsdecode(path))
        if under(real, root) or real in devices:
            return True
        return any(under(real, top) for top in path_roots) and not real.endswith(data_suffixes)

    def caller(depth):
        state["busy"] = True
        try:
            return getframe(depth + 2)     # + this function and the hook
        finally:
            state["busy"] = False

    def load(args):
        kind, spec, box = args
        name, origin = spec.name, getattr(spec, "origin", None)
        if type(name) is not str or type(origin) not in (str, type(None)) or kind not in loaders:
            raise PermissionError("sandbox: malformed module spec")
        if name in blocked:
            raise ImportError(f"sandbox: importing {name} is not allowed")
        box.append(loaders[kind](types.SimpleNamespace(name=name, origin=origin)))

    def private(event, args):
        if event == "polm.sandbox.load":
            return load(args)
        if caller(1) is not main_frame:
            raise PermissionError(f"sandbox: {event} is the harness's own event")
        if event == "polm.sandbox.trust":
            state["trusted"] = True
        elif event == "polm.sandbox.done" and not state["done"]:
            state["done"] = True
            write(report, secret)

    def frames(event, args):
        if event == "sys._getframe" and caller(1).f_code not in frame_codes:
            raise PermissionError("sandbox: frame introspection is not allowed")
        if event == "object.__getattr__" and args[1] in frame_attrs:
            raise PermissionError(f"sandbox: reading {args[1]} is not allowed")

    def files(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if path is not None and writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path}")
            if path is not None and not readable(path):
                raise PermissionError(f"sandbox: reading {path} is not allowed")
        elif event in paths:
            for i in paths[event]:
                if i < len(args) and args[i] is not None and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    def hook(event, args):
        if state["busy"]:
            return None
        if event.startswith("polm.sandbox."):
            return private(event, args)
        if event in deny:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0] in blocked:
            raise ImportError(f"sandbox: importing {args[0]} is not allowed")
        if event == "object.__setattr__" and args[1] == "__code__":
            raise PermissionError("sandbox: replacing a function's code is not allowed")
        if not state["trusted"]:
            frames(event, args)
        return files(event, args)

    return hook


def loader(kind):
    # stands in for _imp.create_builtin/create_dynamic: the originals are only in the hook's closure
    def create(spec, *rest):
        box = []
        sys.audit("polm.sandbox.load", kind, spec, box)
        return box[0]
    return create


def read_stdin():
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return b"".join(chunks)


def snapshot_modules():
    return {name: (m, dict(m.__dict__)) for name, m in list(sys.modules.items())
            if type(m) is types.ModuleType and name != "__main__"}


def restore_modules(saved, modules):
    # undoes the program's monkey-patching of every module loaded before it (builtins, sys, math, ...)
    for name, (module, before) in saved.items():
        modules[name] = module
        now = module.__dict__
        for key in [k for k in now if k not in before]:
            del now[key]
        now.update(before)


def exposed(namespace, pristine, saved):
    # the program's names the tests may call: one that shadows a builtin stays the builtin, a non-function
    # named like a loaded module (a fake `math`) is that module, and callables are wrapped so that a
    # result that equals anything fails
    names = {}
    for k, v in namespace.items():
        if type(k) is not str or k.startswith("__") or k in pristine:
            continue
        if k in saved and type(v) is not types.FunctionType:
            names[k] = saved[k][0]
        else:
            names[k] = refuse_equal_to_anything(v) if callable(v) else v
    return names


class Probe:
    # an object only equal to itself: an honest result never equals it
    __slots__ = ()


def equals_anything(value, probe, depth=0):
    kind = type(value)
    if kind in (int, float, complex, str, bytes, bool, type(None)) or depth > 3:
        return False
    if kind in (list, tuple, set, frozenset, dict):
        items = value.values() if kind is dict else value
        return any(equals_anything(v, probe, depth + 1) for _, v in zip(range(1000), items))
    try:
        return bool(value == probe) or not bool(value != probe)
    except Exception:
        return False


def constructs_itself(cls):
    # a class whose call may return something else (its own __new__, a metaclass __call__) is wrapped;
    # any other class stays itself, so isinstance() in the tests still works
    return type(cls).__call__ is type.__call__ and all(
        "__new__" not in vars(c) for c in cls.__mro__ if c.__module__ != "builtins")


def refuse_equal_to_anything(fn):
    if isinstance(fn, type) and constructs_itself(fn):
        return fn
    probe = Probe()

    def call(*args, **kwargs):
        value = fn(*args, **kwargs)
        if equals_anything(value, probe):
            raise AssertionError(f"sandbox: {type(value).__name__} returned by the program compares equal to anything")
        return value

    for attr in ("__name__", "__qualname__", "__doc__"):
        try:
            setattr(call, attr, getattr(fn, attr))
        except Exception:
            pass
    return call


def report_failure(err, out, err_stream):
    import traceback
    try:
        if isinstance(err, SystemExit):
            err_stream.write(f"sandbox: the program exited (SystemExit {err.code!r}) before its tests finished\n")
        else:
            traceback.print_exception(err, file=err_stream)
    except BaseException:
        err_stream.write(f"sandbox: the program failed with {type(err).__name__}\n")
    flush(out, err_stream)


def flush(*streams):
    for stream in streams:
        try:
            stream.flush()
        except BaseException:
            pass


def setup(program):
    # disarm what the audit hook cannot see: signal handlers and threads (they receive or race frames)
    for module, names in NEUTERED:
        for name in names:
            if hasattr(module, name):
                delattr(module, name)
    for name in sys.builtin_module_names:
        if name not in ("xxsubtype",):
            __import__(name)
    loaders = {"builtin": _imp.create_builtin, "dynamic": _imp.create_dynamic}
    private = types.FunctionType(loader.__code__, {"__builtins__": dict(builtins.__dict__), "sys": sys})
    _imp.create_builtin, _imp.create_dynamic = private("builtin"), private("dynamic")   # not this module's globals
    main_module = types.ModuleType("__main__")
    main_module.__file__, main_module.__builtins__ = program, builtins
    sys.modules["__main__"] = main_module
    sys.argv = [program]
    roots = {os.path.realpath(p) for p in (*sys.path, sys.prefix, sys.base_prefix, "/usr/share/zoneinfo")
             if p and os.path.isdir(p)}
    return main_module, loaders, frozenset(roots)


def main():
    root, program, report = os.path.realpath(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    secret, _, tests = read_stdin().partition(b"\n")
    out, err_stream, exit_now, modules = sys.__stdout__, sys.__stderr__, os._exit, sys.modules
    with open(program, encoding="utf-8") as fh:
        program_code = compile(fh.read(), program, "exec")
    tests_code = compile(tests.decode("utf-8"), "<tests>", "exec")
    del tests
    main_module, loaders, roots = setup(program)
    saved, pristine = snapshot_modules(), dict(builtins.__dict__)
    tools = (sys._getframe, os.write, os.path.realpath, os.fsdecode, roots,
             frozenset({collections.namedtuple.__code__, typing._caller.__code__}), loaders)
    make = types.FunctionType(make_hook.__code__, {"__builtins__": dict(pristine), "types": types})
    sys.addaudithook(make(root, secret, report, sys._getframe(), tools))
    del secret, make, tools, loaders
    try:
        exec(program_code, main_module.__dict__)
        restore_modules(saved, modules)
        tests_namespace = {"__name__": "__tests__", "__builtins__": dict(pristine),
                           **exposed(main_module.__dict__, pristine, saved)}
        exec(tests_code, tests_namespace)
    except BaseException as err:
        sys.audit("polm.sandbox.trust")     # tracebacks may read frames now: the secret is gone from here
        report_failure(err, out, err_stream)
        exit_now(1)
    flush(out, err_stream)
    sys.audit("polm.sandbox.done")
    exit_now(0)


main()
"""


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


def run_python(code: str, limits: Limits | None = None, *, tests: str = "") -> SandboxResult:
    """Run the untrusted `code` as a script in a fresh temp dir under the limits, then the trusted
    `tests` (in their own namespace, seeing the names `code` defined). Passed means both ran to the end:
    exit status 0 AND the run's random sentinel came back on the report pipe."""
    limits = limits or Limits()
    workdir = Path(tempfile.mkdtemp(prefix="polm-sandbox-"))
    try:
        (workdir / "harness.py").write_text(HARNESS)
        (workdir / "program.py").write_text(code)
        drop = _can_drop_privileges()
        if drop:
            os.chown(workdir, NOBODY, NOBODY)
        return _run(workdir, limits, drop, tests)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(workdir: Path, limits: Limits, drop: bool, tests: str) -> SandboxResult:
    out, err = workdir / "stdout.txt", workdir / "stderr.txt"
    sentinel = secrets.token_hex(16).encode()
    report_r, report_w = os.pipe()
    cmd = [sys.executable, "-I", "-B", str(workdir / "harness.py"), str(workdir), str(workdir / "program.py"),
           str(report_w)]
    start = time.monotonic()
    try:
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.PIPE, stdout=fo, stderr=fe,
                                    env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}, pass_fds=(report_w,),
                                    preexec_fn=functools.partial(_confine, limits, drop), start_new_session=True)
            os.close(report_w)
            report_w = -1
            feeder = threading.Thread(target=_feed, args=(proc, sentinel + b"\n" + tests.encode()), daemon=True)
            feeder.start()
            try:
                code: int | None = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_group(proc)
        report = _drain(report_r)
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
    seconds = time.monotonic() - start
    return SandboxResult(_status(code, hmac.compare_digest(report, sentinel)), code, _tail(out), _tail(err),
                         seconds, proc.pid)


def _status(code: int | None, reported: bool) -> str:
    """passed only with exit 0 and the sentinel; exit 0 without it (an early exit) is a failure."""
    if code is None:
        return "timeout"
    if code < 0:
        return "killed"
    return "passed" if code == 0 and reported else "failed"


def _feed(proc: subprocess.Popen, payload: bytes) -> None:
    """The sentinel line, then the tests, on the child's stdin (the harness reads it all before the program)."""
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def _drain(fd: int, limit: int = 1 << 16) -> bytes:
    """What the child left on the report pipe; non-blocking, since every writer is dead or killed."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < limit:
        try:
            chunk = os.read(fd, limit)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


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
