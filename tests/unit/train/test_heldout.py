"""Held-out eval: loss is Σ loss_sum / Σ count and metrics are count-weighted, as derived by hand."""

import math

import torch

from polm.train.heldout import make_heldout_eval, with_perplexity
from polm.train.loop import StepOutput


def test_weighted_by_count_across_batches():
    examples = [{"x": torch.tensor([1.0, 2.0, 3.0])}, {"x": torch.tensor([4.0])}, {"x": torch.tensor([5.0, 6.0])}]

    def collate(exs):
        return {"x": torch.cat([e["x"] for e in exs])}

    def step(batch):  # "loss" of a unit = its value; metric = batch mean
        x = batch["x"]
        return StepOutput(loss_sum=x.sum(), count=x.numel(), metrics={"m": float(x.mean())})

    out = make_heldout_eval(step, examples, collate, batch_size=2, device=torch.device("cpu"))()
    # batches: [1,2,3,4] (sum 10, n 4, mean 2.5) and [5,6] (sum 11, n 2, mean 5.5)
    assert out["loss"] == 21 / 6
    assert out["m"] == (2.5 * 4 + 5.5 * 2) / 6
    assert abs(with_perplexity(lambda: {"loss": math.log(7.0)})()["ppl"] - 7.0) < 1e-9
