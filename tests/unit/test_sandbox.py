"""The sandbox stops hostile code (writes outside its dir, sockets, fork bombs, endless loops, memory
hogs) with no side effect, and HumanEval scores such completions 0. A pass means the tests ran to the
end: every trick in ESCAPES (early exits, patched asserts/builtins/modules, shadowed check, reading the
tests or the sentinel, faked output, signal/thread/trace/atexit tricks) scores a wrong solution 0, while
honest solutions (correct, noisy, importing the standard library) still pass."""

from __future__ import annotations

import socket
import tempfile
import threading
import time

import pytest

from polm.eval.code import HumanEvalTask
from polm.eval.runner import evaluate_task
from polm.eval.task import EvalSettings
from polm.sandbox import Limits, run_python

# HumanEval-style tests for `add`; the program under test defines `add` wrongly (a - b) and then tries
# to pass anyway. `check` also uses abs() and math, so shadowing or patching those is tried too.
TESTS = """import math

def check(candidate):
    assert candidate(2, 3) == 5
    assert abs(candidate(1, 1) - 2) < 1e-9
    assert math.isclose(candidate(0.5, 0.25), 0.75)

check(add)
"""
# right where the tests use ==/math.isclose, wrong where they use abs()
ABS_ONLY_WRONG = "def add(a, b):\n    return {(2, 3): 5, (0.5, 0.25): 0.75}.get((a, b), 0)\n"
ALWAYS_EQUAL = ("class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n\n"
                "    def __ne__(self, other):\n        return False\n\n    def __sub__(self, other):\n"
                "        return 0\n\n    def __float__(self):\n        return 0.75\n\n    __hash__ = object.__hash__\n\n")
WRONG = "def add(a, b):\n    return a - b\n"
RIGHT = "def add(a, b):\n    return a + b\n"


def peek(expr: str, imports: str = "import os, sys") -> str:
    """A wrong `add` that becomes right if `expr` reveals the tests' text (read the tests, hardcode)."""
    return (f"{imports}\n{WRONG}try:\n    found = str({expr})\nexcept BaseException:\n    found = ''\n"
            "if 'candidate(' + '2, 3)' in found:\n    def add(a, b):\n        return a + b\n")


TRACEBACK_PEEK = (WRONG + "found = ''\ntry:\n    1 / 0\nexcept ZeroDivisionError as err:\n    try:\n"
                  "        found = str(err.__traceback__.tb_frame.f_back.f_locals)\n    except BaseException:\n"
                  "        pass\nif 'candidate(' + '2, 3)' in found:\n    def add(a, b):\n        return a + b\n")


def forge(tokens: str, imports: str = "import os, re, sys") -> str:
    """A wrong `add`, then every 32-hex-digit token `tokens` yields goes to every descriptor, then exit 0."""
    return (f"{imports}\n{WRONG}try:\n    found = set(re.findall(r'[0-9a-f]{{32}}', str({tokens})))\n"
            "except BaseException:\n    found = set()\nprint(*found, sep='\\n')\n"
            "for fd in range(1, 64):\n    for tok in found:\n        try:\n            os.write(fd, tok.encode())\n"
            "        except OSError:\n            pass\nos._exit(0)\n")


ESCAPES = [
    ("sys.exit(0) before the tests", WRONG + "import sys\nsys.exit(0)\n"),
    ("os._exit(0) before the tests", WRONG + "import os\nos._exit(0)\n"),
    ("raise SystemExit", WRONG + "raise SystemExit\n"),
    ("exit()", WRONG + "exit()\n"),
    ("quit()", WRONG + "quit()\n"),
    ("SystemExit(0) from inside the function under test", "def add(a, b):\n    raise SystemExit(0)\n"),
    ("KeyboardInterrupt", WRONG + "raise KeyboardInterrupt\n"),
    ("GeneratorExit", WRONG + "raise GeneratorExit\n"),
    ("a BaseException subclass raised by the function",
     "class Out(BaseException):\n    pass\n\ndef add(a, b):\n    raise Out()\n"),
    ("builtins.AssertionError replaced",
     WRONG + "import builtins\nclass Quiet(Exception):\n    pass\nbuiltins.AssertionError = Quiet\n"),
    ("__builtins__ redefined with a lying abs",
     ABS_ONLY_WRONG +
     "import builtins\n__builtins__ = dict(vars(builtins), abs=lambda x: 0)\n"),
    ("a builtin the tests use shadowed (abs)",
     ABS_ONLY_WRONG + "\ndef abs(x):\n    return 0\n"),
    ("builtins.abs patched", ABS_ONLY_WRONG +
     "import builtins\nbuiltins.abs = lambda x: 0\n"),
    ("a module the tests use monkey-patched (math.isclose)",
     "def add(a, b):\n    return {(2, 3): 5, (1, 1): 2}.get((a, b), 0)\n"
     "import math\nmath.isclose = lambda *a, **k: True\n"),
    ("check defined by the program", WRONG + "def check(candidate):\n    pass\n"),
    ("check planted in builtins", WRONG + "import builtins\nbuiltins.check = lambda candidate: None\n"),
    ("check replaced from inside the function under test",
     "def add(a, b):\n    globals()['check'] = lambda c: None\n    return a - b\n"),
    ("the tests' globals reached through the entry point", "def add(a, b):\n    import sys\n"
     "    sys.modules['__main__'].__dict__['check'] = lambda c: None\n    return a - b\n"),
    ("the test file read from the working directory",
     peek("[open(f).read() for f in os.listdir('.') if os.path.isfile(f)]")),
    ("the tests read from stdin", peek("sys.stdin.read()")),
    ("the tests read from /proc/self/fd/0", peek("open('/proc/self/fd/0').read()")),
    ("the tests read from /proc/self/mem", peek("open('/proc/self/mem', 'rb').read(1)")),
    ("the tests read from the parent's /proc", peek("open(f'/proc/{os.getppid()}/cmdline').read()")),
    ("the tests read from sys.argv and the environment", peek("(sys.argv, dict(os.environ))")),
    ("the tests read from the harness's frames", peek("[f.f_locals for f in [sys._getframe(1)]]")),
    ("the tests read via a traceback's frames", TRACEBACK_PEEK),
    ("the tests read via inspect.stack()", peek("[f.frame.f_locals for f in inspect.stack()]", "import inspect")),
    ("the tests read via gc.get_objects()", peek("[o for o in gc.get_objects() if isinstance(o, dict)]",
                                                 "import gc")),
    ("the tests read via the harness module", peek("vars(__import__('__main__'))")),
    ("the tests read via a new audit hook (compile/exec events)",
     WRONG + "import sys\nseen = []\nsys.addaudithook(lambda e, a: seen.append(a))\n"),
    ("sys.settrace swallowing the test run", WRONG + "import sys\nsys.settrace(lambda *a: None)\n"),
    ("sys.setprofile", WRONG + "import sys\nsys.setprofile(lambda *a: None)\n"),
    ("atexit handler exiting 0", WRONG + "import atexit, os\natexit.register(os._exit, 0)\n"),
    ("sys.excepthook catching the AssertionError",
     WRONG + "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n"),
    ("a signal handler that exits 0",
     WRONG + "import os, signal\nsignal.signal(signal.SIGALRM, lambda *a: os._exit(0))\nsignal.alarm(1)\n"),
    ("a fresh _signal module for a handler", WRONG + "import importlib.util, os\n"
     "sig = importlib.util.module_from_spec(importlib.util.find_spec('_signal'))\n"
     "sig.signal(14, lambda *a: os._exit(0))\nsig.alarm(1)\n"),
    ("a thread that replaces check while the tests run", WRONG + "import threading\n"
     "threading.Thread(target=lambda: globals().update(check=lambda c: None)).start()\n"),
    ("a forked child that reports later", WRONG + "import os, time\nif os.fork() == 0:\n"
     "    time.sleep(0.5)\n    print('ok')\n    os._exit(0)\n"),
    ("_posixsubprocess.fork_exec", WRONG + "import _posixsubprocess\n"),
    # signal 0 only checks that the signal could be sent: harmless to the test runner if a guard regresses
    ("the parent killed", WRONG + "import os\nos.kill(os.getppid(), 0)\n" + RIGHT),
    ("the parent killed by pidfd", WRONG + "import os, signal\n"
     "signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0)\n" + RIGHT),
    ("the harness's done event raised by the program", WRONG + "import sys\nsys.audit('polm.sandbox.done')\n"),
    ("a made-up sentinel printed and written to every descriptor", forge("__import__('secrets').token_hex(16)")),
    ("a fake final stdout line", WRONG + "import os\nprint('0' * 32)\nprint('passed')\nos._exit(0)\n"),
    ("the sentinel searched for in the harness's frames", forge("[f.f_locals for f in [sys._getframe(1)]]")),
    ("the sentinel searched for in gc objects", forge("gc.get_objects()", "import gc, os, re, sys")),
    ("the sentinel searched for in /proc/self/mem", forge("open('/proc/self/mem', 'rb').read(1)")),
    ("a result that compares equal to anything", ALWAYS_EQUAL + "def add(a, b):\n    return AlwaysEqual()\n"),
    ("a list of such results", ALWAYS_EQUAL + "def add(a, b):\n    return [AlwaysEqual()]\n"),
    ("a float subclass equal to anything",
     "class Yes(float):\n    def __eq__(self, other):\n        return True\n\n    def __sub__(self, other):\n"
     "        return 0.0\n\n    __hash__ = float.__hash__\n\ndef add(a, b):\n    return Yes(0.75)\n"),
    ("an entry point class whose __new__ returns such a result",
     ALWAYS_EQUAL + "class add:\n    def __new__(cls, a, b):\n        return AlwaysEqual()\n"),
    ("a callable object returning such a result", ALWAYS_EQUAL + "class Adder:\n    def __call__(self, a, b):\n"
     "        return AlwaysEqual()\n\nadd = Adder()\n"),
    ("output flood past the file limit", WRONG + "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"),
    ("sleeping past the timeout", WRONG + "import time\ntime.sleep(60)\n"),
    ("memory exhaustion", WRONG + "x = bytearray(8 * 1024 ** 3)\n"),
]


def gone(pid: int) -> bool:
    """No live process with this id (a zombie would still show as 'Z')."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_plain_program_runs_in_a_temp_dir_that_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = run_python("import os\nopen('note.txt', 'w').write('ok')\nprint(open('note.txt').read(), os.getcwd())")
    assert res.passed and gone(res.pid)
    text, cwd = res.stdout.split()
    assert text == "ok" and cwd.startswith(str(tmp_path / "polm-sandbox-"))
    assert list(tmp_path.iterdir()) == []


def test_writes_and_deletes_outside_the_temp_dir_are_refused(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    evil = tmp_path / "evil.txt"
    for code in (f"open({str(evil)!r}, 'w').write('x')",
                 f"import os\nos.chdir({str(tmp_path)!r})\nopen('evil.txt', 'a').write('x')",
                 f"import os\nos.remove({str(keep)!r})",
                 f"import os\nos.rename({str(keep)!r}, 'stolen.txt')",
                 f"import shutil\nshutil.rmtree({str(tmp_path)!r})"):
        res = run_python(code)
        assert res.status == "failed" and "sandbox:" in res.stderr, code
    assert not evil.exists() and keep.read_text() == "precious"


def test_sockets_are_refused_and_nothing_connects():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: _accept(server, accepted))
    thread.start()
    res = run_python(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                     "s.sendall(b'leak')")
    thread.join()
    server.close()
    assert res.status == "failed" and "sandbox: socket" in res.stderr
    assert accepted == []


def _accept(server: socket.socket, accepted: list) -> None:
    try:
        accepted.append(server.accept())
    except OSError:
        pass


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nwhile True:\n    subprocess.Popen(['python3', '-c', 'import time; time.sleep(60)'])",
    "import os\nos.system(':(){ :|:& };:')",
])
def test_fork_bombs_are_stopped(code):
    start = time.monotonic()
    res = run_python(code, Limits(timeout_s=3))
    assert res.status in ("failed", "timeout", "killed") and not res.passed
    assert time.monotonic() - start < 10 and gone(res.pid)


def test_endless_loop_and_memory_hog_are_stopped():
    start = time.monotonic()
    res = run_python("while True:\n    pass", Limits(timeout_s=1.5))
    assert res.status == "timeout" and 1.4 < time.monotonic() - start < 6 and gone(res.pid)
    res = run_python("x = bytearray(8 * 1024 ** 3)", Limits(memory_mb=512))
    assert res.status == "failed" and "MemoryError" in res.stderr


def test_output_flood_is_capped():
    res = run_python("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", Limits(timeout_s=3, file_mb=1))
    assert not res.passed and len(res.stdout) <= 4000


class ScriptedCoder:
    """A model double that returns fixed completions for every prompt."""

    chat = False

    def __init__(self, completions: list[str]):
        self.completions = completions

    def format_prompt(self, prompt):
        return prompt

    def generate(self, prompts, *, n, **kwargs):
        assert n == len(self.completions)
        return [list(self.completions) for _ in prompts]


def test_hostile_humaneval_completions_score_zero_without_side_effects(tmp_path):
    task = HumanEvalTask(timeout=2.0)
    item = task.load_items()[0]
    marker = tmp_path / "pwned.txt"
    hostile = [
        f"    open({str(marker)!r}, 'w').write('x')\n    return True\n",
        "    import socket\n    socket.create_connection(('127.0.0.1', 9))\n",
        "    import os\n    while True:\n        os.fork()\n",
        "    while True:\n        pass\n",
    ]
    settings = EvalSettings(mode="self-consistency", samples=len(hostile))
    [record] = evaluate_task(task, ScriptedCoder(hostile), [item], settings)
    assert record["metrics"]["pass@1"] == 0.0 and record["metrics"][f"pass@{len(hostile)}"] == 0.0
    assert record["status"][-1] == "timeout" and not marker.exists()


@pytest.mark.parametrize("name, program", ESCAPES, ids=[name for name, _ in ESCAPES])
def test_escapes_do_not_pass(name, program):
    res = run_python(program, Limits(timeout_s=3, file_mb=1), tests=TESTS)
    assert res.status in ("failed", "timeout", "killed") and not res.passed, (name, res.stderr[-2000:])
    assert gone(res.pid)


def test_escapes_would_pass_if_they_worked():
    """Each escape's fallback is right: with the trick's effect granted, the tests pass."""
    assert run_python(RIGHT, tests=TESTS).passed
    assert not run_python(WRONG, tests=TESTS).passed
    assert run_python(peek("'candidate(2, 3)'"), tests=TESTS).passed       # a peek that finds the tests passes


def test_the_sentinel_is_fresh_per_run_and_never_on_stdout():
    res = run_python("print('hi')", tests="print('tests ran')")
    assert res.passed and res.stdout == "hi\ntests ran\n"


def test_honest_solutions_pass():
    assert run_python(RIGHT, tests=TESTS).passed
    noisy = RIGHT + "for i in range(20000):\n    print('line', i)\n"
    res = run_python(noisy, tests=TESTS)
    assert res.passed and res.stdout.endswith("line 19999\n")
    stdlib = ("import bisect, collections, copy, dataclasses, datetime, decimal, enum, fractions, functools, "
              "hashlib, heapq, itertools, json, math, operator, random, re, statistics, string, typing\n"
              "from typing import List, TypeVar\nT = TypeVar('T')\nPoint = collections.namedtuple('Point', 'x y')\n"
              "@dataclasses.dataclass\nclass Box:\n    v: int\n"
              "def add(a, b):\n    return functools.reduce(operator.add, [a, b], Box(0).v + Point(0, 0).x)\n")
    assert run_python(stdlib, tests=TESTS).passed
    assert run_python(RIGHT + "import sys\nprint('warn', file=sys.stderr)\n", tests=TESTS).passed
    helper = "def copy(xs):\n    return list(xs)\n"            # a function named like a loaded module
    assert run_python(helper, tests="assert copy((1, 2)) == [1, 2]\n").passed


def test_a_failing_test_is_reported_with_its_traceback():
    res = run_python(WRONG, tests=TESTS)
    assert res.status == "failed" and "AssertionError" in res.stderr and "<tests>" in res.stderr
    res = run_python(WRONG + "import sys\nsys.exit(0)\n", tests=TESTS)
    assert res.status == "failed" and "SystemExit 0" in res.stderr


def test_a_fake_object_under_a_module_name_is_not_what_the_tests_see():
    fake = ("import math\ndef add(a, b):\n    return {(2, 3): 5, (1, 1): 2}.get((a, b), 0)\n\n"
            "class FakeMath:\n    isclose = staticmethod(lambda *a, **k: True)\n\nmath = FakeMath()\n")
    tests = TESTS.replace("import math\n", "")      # tests that rely on the program's `import math`
    assert not run_python(fake, tests=tests).passed
    assert run_python("import math\n" + RIGHT, tests=tests).passed
