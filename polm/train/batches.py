"""What the training loop trains on: the `BatchSource` protocol, and `BatchStream`, an endless,
seeded, resumable stream of collated micro-batches over a list of examples.

Epoch e visits the examples in the order `randperm(n, seed + e)`; the position in the stream is two
integers (epoch, cursor), so a checkpoint resumes on exactly the next micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from polm.errors import PolmError


@runtime_checkable
class BatchSource(Protocol):
    """An endless iterator of micro-batches (dicts of tensors) that the loop checkpoints and resumes.

    `step_metrics()` is the source's own channel for numbers about the data (rollout rewards,
    generation time): the loop calls it once per optimizer step, after the step's micro-batches, and
    logs what it returns with that step; each call returns what accrued since the last and clears it.
    """

    def __iter__(self) -> Iterator[dict]: ...

    def __next__(self) -> dict: ...

    def steps_per_epoch(self, grad_accum: int) -> int: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def step_metrics(self) -> dict[str, float]: ...


class BatchStream(Iterator[dict]):
    """Infinite iterator of `collate(examples[i:i+micro_batch_size])` across epochs.

    The last micro-batch of an epoch may be smaller (no example is dropped); the next one starts
    the next epoch with a fresh permutation.
    """

    def __init__(
        self,
        examples: list,
        collate: Callable[[list], dict],
        micro_batch_size: int,
        seed: int,
        shuffle: bool = True,
    ):
        if not examples:
            raise PolmError("the training set is empty", fix="Check the data file and any filters or length limits.")
        if micro_batch_size < 1:
            raise PolmError(f"micro_batch_size must be at least 1, got {micro_batch_size}")
        self.examples, self.collate = examples, collate
        self.micro_batch_size, self.seed, self.shuffle = micro_batch_size, seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.micro_batch_size)

    def steps_per_epoch(self, grad_accum: int) -> int:
        """Optimizer steps that consume one epoch: ceil(micro-batches per epoch / grad_accum)."""
        return math.ceil(self.micro_batches_per_epoch / grad_accum)

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.examples)))
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(len(self.examples), generator=gen).tolist()

    def __next__(self) -> dict:
        if self.cursor >= len(self.examples):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        picked = self._order[self.cursor:self.cursor + self.micro_batch_size]
        self.cursor += len(picked)
        return self.collate([self.examples[i] for i in picked])

    def step_metrics(self) -> dict[str, float]:
        """Nothing: a list of examples has no numbers of its own to log."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "size": len(self.examples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; the data must be the same size as when it was saved."""
        if state["size"] != len(self.examples):
            raise PolmError(
                f"the checkpoint was saved with {state['size']} training examples, now there are "
                f"{len(self.examples)}",
                fix="Resume with the same data, or start a fresh run (train.resume=false).",
            )
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._order = self._permutation(self.epoch)
