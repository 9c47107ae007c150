"""The same `polm sft` / `polm grpo` command in two fresh interpreters, one with
PYTHONHASHSEED=1 and one with PYTHONHASHSEED=2, logs the same loss and grad norm at every step:
nothing polm computes depends on the process or on set/dict hash order."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_kill_resume import REWARDS, ROOT, history, recipe_args, write_data


@pytest.mark.parametrize("recipe", ["sft", "grpo"])   # dpo's path adds nothing hash-ordered beyond sft's
def test_two_fresh_processes_with_different_hash_seeds_log_the_same_history(recipe, tiny_model_dir, tmp_path):
    (tmp_path / "polm_kill_rewards.py").write_text(REWARDS)
    data = write_data(recipe, tmp_path)
    procs = {}
    for hash_seed in ("1", "2"):                      # started together: two cores halve the wait
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
        argv = recipe_args(recipe, tiny_model_dir, data, tmp_path / f"run-{hash_seed}", steps=4)
        procs[hash_seed] = subprocess.Popen([sys.executable, "-m", "polm.cli", *argv], env=env, cwd=ROOT,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for proc in procs.values():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    first, second = history(tmp_path / "run-1"), history(tmp_path / "run-2")
    assert [s for s, _, _ in first] == [1, 2, 3, 4]
    assert first == second
    assert len({loss for _, loss, _ in first}) > 1
