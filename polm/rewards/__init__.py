"""Rewards for RL: a registry of scorers (polm.rewards.base) and the built-in ones, registered on import.

A reward is `fn(completions: list[str], records: list[dict], **options) -> list[float]`, registered
with `@reward(name, requires=(fields...))`; `RewardSet` combines weighted rewards and counts failures.
"""

from polm.rewards import builtin, code, models  # noqa: F401  (they register the built-in rewards)
from polm.rewards.base import REWARDS, RewardScores, RewardSet, reward

__all__ = ["REWARDS", "RewardScores", "RewardSet", "reward"]
