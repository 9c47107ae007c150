"""The sandbox stops hostile code (writes outside its dir, sockets, fork bombs, endless loops, memory
hogs) with no side effect, and HumanEval scores such completions 0."""

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
