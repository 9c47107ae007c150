"""Model merging: pure per-tensor merge methods in a registry, and a streaming runner (`polm merge`)."""

from polm.merge.config import MergeConfig, load_merge_config
from polm.merge.methods import MERGE_METHODS, MethodSpec, merge_method

__all__ = ["MERGE_METHODS", "MergeConfig", "MethodSpec", "load_merge_config", "merge_method", "run_merge"]


def run_merge(cfg: MergeConfig):
    """Plan, check and write the merge described by `cfg`; returns the output directory."""
    from polm.merge.runner import run_merge as _run

    return _run(cfg)
