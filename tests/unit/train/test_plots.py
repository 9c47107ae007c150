"""plot_metrics: PNG curves from metrics.jsonl."""

from __future__ import annotations

import pytest

from polm.errors import PolmError
from polm.train.metrics import MetricsLogger
from polm.train.plots import plot_metrics


def test_loss_lr_and_grad_norm_plots_are_written(tmp_path):
    from matplotlib.image import imread

    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 11):
        logger.log({"step": step, "loss": 5.0 / step, "lr": 1e-3 * step / 10, "grad_norm": 2.0 / step})
        if step % 5 == 0:
            logger.log({"step": step, "eval/loss": 6.0 / step})
    logger.log({"step": 10, "event": "diverged", "loss": float("nan")})
    logger.close()
    written = plot_metrics(tmp_path)
    assert [p.name for p in written] == ["loss.png", "lr.png", "grad_norm.png"]
    for path in written:
        assert path.parent == tmp_path / "plots"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(path)
        assert image.shape[:2] == (480, 840)               # 7 x 4 inches at 120 dpi
        assert image[..., :3].std() > 0.05                  # something was drawn
    assert not list((tmp_path / "plots").glob(".*"))         # no temp files left


def test_no_metrics_is_a_polm_error(tmp_path):
    with pytest.raises(PolmError, match="no training loss to plot"):
        plot_metrics(tmp_path)


def test_rl_runs_get_a_reward_plot_with_each_component(tmp_path, monkeypatch):
    import polm.train.plots as plots

    seen = {}
    real = plots._save_figure

    def spy(curves, ylabel, title, path):
        seen[path.name] = curves
        return real(curves, ylabel, title, path)

    monkeypatch.setattr(plots, "_save_figure", spy)
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        logger.log({"step": step, "loss": 0.1, "reward/mean": 0.2 * step, "reward/std": 0.1,
                    "reward/reasoning_gym/mean": 0.15 * step, "reward/format/mean": 0.05 * step})
    logger.close()
    written = plot_metrics(tmp_path)
    assert [p.name for p in written] == ["loss.png", "reward.png"]
    assert sorted(seen["reward.png"]) == ["format", "reasoning_gym", "total"]
    assert seen["reward.png"]["total"] == ([1, 2, 3, 4, 5], [0.2, 0.4, 0.6000000000000001, 0.8, 1.0])
