"""The code reward runs responses against tests in the sandbox; hostile code scores 0 and scoring goes on,
and no trick in the sandbox's ESCAPES list earns a wrong solution a reward."""

import importlib.util
from pathlib import Path

from polm.rewards import REWARDS, RewardSet

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


def _reply(body: str) -> str:
    return f"Here you go:\n```python\n{body}\n```"


def test_correct_and_wrong_code():
    fn = REWARDS.get("code")
    good, bad = _reply("def add(a, b):\n    return a + b"), _reply("def add(a, b):\n    return a - b")
    assert fn([good, bad, "no code at all"], [{"tests": TESTS}] * 3, timeout_s=10) == [1.0, 0.0, 0.0]


def test_hostile_code_is_stopped_rewarded_zero_and_scoring_continues(tmp_path):
    target = tmp_path / "escaped.txt"
    hostile = {
        "write outside": f"open({str(target)!r}, 'w').write('x')\ndef add(a, b):\n    return a + b",
        "socket": "import socket\nsocket.create_connection(('1.1.1.1', 80))\ndef add(a, b):\n    return a + b",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "endless loop": "while True:\n    pass",
    }
    good = _reply("def add(a, b):\n    return a + b")
    rs = RewardSet({"code": 1.0}, {"code": {"timeout_s": 2.0}})
    completions = [_reply(code) for code in hostile.values()] + [good]
    scores = rs.score(completions, [{"tests": TESTS}] * len(completions))
    assert scores.per_reward["code"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert scores.failures == {"code": 0}        # a sandboxed failure is a 0 score, not a broken reward
    assert not Path(target).exists()


def _sandbox_escapes():
    """tests/unit/test_sandbox.py's ESCAPES and TESTS (one list of tricks for the sandbox and the reward)."""
    spec = importlib.util.spec_from_file_location("sandbox_escapes", Path(__file__).parents[1] / "test_sandbox.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_sandbox_escape_earns_a_reward():
    escapes = _sandbox_escapes()
    fn = REWARDS.get("code")
    completions = [_reply(program) for _, program in escapes.ESCAPES] + [_reply(escapes.RIGHT)]
    scores = fn(completions, [{"tests": escapes.TESTS}] * len(completions), timeout_s=3.0)
    assert scores == [0.0] * len(escapes.ESCAPES) + [1.0]


def test_an_early_exit_scores_zero():
    fn = REWARDS.get("code")
    wrong = "def add(a, b):\n    return a - b\n"
    exits = [wrong + "import sys\nsys.exit(0)", wrong + "import os\nos._exit(0)", wrong + "raise SystemExit"]
    assert fn([_reply(code) for code in exits], [{"tests": TESTS}] * 3, timeout_s=10) == [0.0, 0.0, 0.0]
