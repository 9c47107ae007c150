"""The reward registry and the weighted combination of rewards (RewardSet).

A reward is `fn(completions: list[str], records: list[dict], **options) -> list[float]`, registered
with the record fields it needs. `RewardSet` checks those fields on the data before training, calls
each reward, and turns an exception or a NaN into a counted, reported failure worth 0 — a broken
reward never ends a long run silently and never passes as a real score.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from polm.errors import PolmError
from polm.registry import Registry, check_options

REWARDS = Registry("reward", {"requires": ()})   # requires: the record fields the reward reads
RewardFn = Callable[..., list[float]]


def reward(name: str, requires: tuple[str, ...] = ()) -> Callable[[RewardFn], RewardFn]:
    """Register `fn` under `name`; `requires` lists the record fields it reads. A plug-in module may
    use it too, or go undeclared (then it requires no field)."""
    return REWARDS.register(name, requires=tuple(requires))


@dataclass
class RewardScores:
    total: list[float]                                   # Σ_k w_k r_k per completion
    per_reward: dict[str, list[float]]                   # r_k per completion (failures count as 0)
    failures: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """reward/mean, reward/std and, per reward k, reward/k/mean, reward/k/std, reward/k/failures."""
        out = {"reward/mean": _mean(self.total), "reward/std": _std(self.total)}
        for name, values in self.per_reward.items():
            out.update({f"reward/{name}/mean": _mean(values), f"reward/{name}/std": _std(values),
                        f"reward/{name}/failures": float(self.failures.get(name, 0))})
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _std(xs: list[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)) if xs else 0.0


class RewardSet:
    """Named rewards with weights, e.g. {"reasoning_gym": 1.0, "format": 0.2}; `options[name]` are
    keyword arguments for that reward (a model path, a pattern, a timeout)."""

    def __init__(self, weights: dict[str, float], options: dict[str, dict] | None = None):
        if not weights:
            raise PolmError("no reward is configured", where="rewards",
                            fix="Name at least one, e.g. rewards: {reasoning_gym: 1.0}. Known: "
                                + ", ".join(REWARDS.names()) + ".")
        options = options or {}
        unknown = set(options) - set(weights)
        if unknown:
            raise PolmError(f"reward_options has options for '{sorted(unknown)[0]}', which is not in rewards",
                            where="reward_options", fix="Add it to rewards: or remove its options.")
        self.weights = {name: float(w) for name, w in weights.items()}
        entries = {name: REWARDS.entry(name) for name in weights}
        self.fns = {name: entry.obj for name, entry in entries.items()}
        self.requires = {name: entry.meta["requires"] for name, entry in entries.items()}
        self.options = {name: check_options(self.fns[name], options.get(name) or {}, where=f"reward_options.{name}",
                                            skip=2, owner=f"reward '{name}'") for name in weights}
        self.failures = {name: 0 for name in weights}
        self._reported: set[str] = set()

    def check_records(self, records: list[dict], source: str) -> None:
        """Every record must carry the fields each reward needs; say which record and field if not."""
        for name, fields in self.requires.items():
            for field_name in fields:
                for i, rec in enumerate(records):
                    if field_name not in rec or rec[field_name] is None:
                        raise PolmError(
                            f"record {i + 1} has no '{field_name}' field, which reward '{name}' needs",
                            where=source, fix=f"Add '{field_name}' to every record, or use a reward that does "
                                              f"not need it (fields present: {', '.join(sorted(rec)) or 'none'}).")

    def score(self, completions: list[str], records: list[dict]) -> RewardScores:
        per_reward, failed = {}, {}
        for name, fn in self.fns.items():
            values, bad = self._call(name, fn, completions, records)
            per_reward[name], failed[name] = values, bad
            self.failures[name] += bad
        total = [sum(self.weights[n] * per_reward[n][i] for n in per_reward) for i in range(len(completions))]
        return RewardScores(total, per_reward, failed)

    def _call(self, name: str, fn: RewardFn, completions: list[str], records: list[dict]) -> tuple[list[float], int]:
        """Scores with failures as 0: a batch call first, then one by one to isolate what fails."""
        try:
            values = [float(v) for v in fn(completions, records, **self.options[name])]
            if len(values) != len(completions):
                raise ValueError(f"returned {len(values)} scores for {len(completions)} completions")
            if all(math.isfinite(v) for v in values):
                return values, 0
        except Exception as err:  # noqa: BLE001 - a user's reward may raise anything; it is counted below
            self._report(name, err)
        out, bad = [], 0
        for c, r in zip(completions, records):
            try:
                v = float(fn([c], [r], **self.options[name])[0])
            except Exception as err:  # noqa: BLE001
                self._report(name, err)
                v = math.nan
            if not math.isfinite(v):
                self._report(name, ValueError(f"returned {v}"))
                v, bad = 0.0, bad + 1
            out.append(v)
        return out, bad

    def report_failures(self) -> None:
        """After a run: one warning naming each reward that failed and how often."""
        failed = {k: v for k, v in self.failures.items() if v}
        if failed:
            print("polm: warning: reward failures during the run (scored 0): "
                  + ", ".join(f"{k}: {v}" for k, v in failed.items()) + " — see reward/<name>/failures in metrics.jsonl")

    def _report(self, name: str, err: Exception) -> None:
        if name not in self._reported:   # once per reward, the count goes to the metrics every step
            self._reported.add(name)
            print(f"polm: warning: reward '{name}' failed ({type(err).__name__}: {err}); such completions score 0 "
                  f"and are counted in reward/{name}/failures", file=sys.stderr)

