"""Task specs: typed arguments, did-you-mean for unknown names, user plug-ins by module path."""

from __future__ import annotations

import pytest

from polm.errors import PolmError
from polm.eval.registry import get_task, split_spec, task_names


def test_split_spec_parses_typed_arguments():
    assert split_spec("arith:chain_sum?n=20&seed=7&allow_negation=true&x=0.5&name=abc") == (
        "arith:chain_sum", {"n": 20, "seed": 7, "allow_negation": True, "x": 0.5, "name": "abc"})
    with pytest.raises(PolmError, match="not key=value"):
        split_spec("gsm8k?limit")


def test_unknown_task_suggests_the_closest():
    assert {"arith", "gsm8k", "gpqa-diamond", "perplexity", "qa"} <= set(task_names())
    with pytest.raises(PolmError, match="Did you mean 'gsm8k'"):
        get_task("gsm8")
    with pytest.raises(PolmError, match="Did you mean 'arith'"):
        get_task("arth:chain_sum")
    with pytest.raises(PolmError, match=r"^gpqa-diamond.methd: task .* has no parameter 'methd'.*Did you mean 'method'"):
        get_task("gpqa-diamond?methd=generate")


def test_user_task_from_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_eval_tasks.py").write_text(
        "from polm.eval.builtin_tasks import GSM8KTask\n"
        "class Tiny(GSM8KTask):\n"
        "    def __init__(self, *, keep=2):\n"
        "        self.keep = keep\n"
        "    def load_items(self, limit=None):\n"
        "        return super().load_items(limit)[:self.keep]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    task = get_task("my_eval_tasks:Tiny?keep=3")
    assert task.name == "my_eval_tasks:Tiny?keep=3" and len(task.load_items()) == 3
    with pytest.raises(PolmError, match="has no eval task 'Tin'"):
        get_task("my_eval_tasks:Tin")
