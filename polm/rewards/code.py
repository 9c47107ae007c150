"""Code-execution reward: the program in the response runs against the record's tests in polm.sandbox."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from polm.eval.code import extract_code
from polm.rewards.base import reward
from polm.sandbox import Limits, run_python


@reward("code", requires=("tests",))
def code_tests(completions: list[str], records: list[dict], timeout_s: float = 5.0, memory_mb: int = 512,
               workers: int = 2) -> list[float]:
    """1.0 when the last ```python block of the response (or the whole response) runs in the sandbox
    and record['tests'] (asserts) then run to the end against it (polm.sandbox's meaning of a pass);
    0 on a failure, an early exit, a timeout, a killed process, or any attempt to write outside its
    temp dir, open a socket or fork."""
    limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb)
    runs = [(extract_code(c), r["tests"]) for c, r in zip(completions, records)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:   # each run is its own process
        results = list(pool.map(lambda run: run_python(run[0], limits, tests=run[1]), runs))
    return [1.0 if res.passed else 0.0 for res in results]
