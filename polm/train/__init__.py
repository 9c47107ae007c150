"""The shared training loop every recipe uses: `train(model=..., step_fn=..., batches=..., cfg=..., run_dir=...)`."""

from polm.train.batches import BatchStream
from polm.train.config import TrainConfig
from polm.train.loop import StepOutput, TrainResult, train

__all__ = ["BatchStream", "StepOutput", "TrainConfig", "TrainResult", "train"]
