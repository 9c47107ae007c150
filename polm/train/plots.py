"""PNG training curves from a run's metrics.jsonl (matplotlib's Agg canvas, no display needed)."""

from __future__ import annotations

from pathlib import Path

from polm.errors import PolmError
from polm.io import atomic_file
from polm.train.metrics import METRICS_FILE, read_metrics


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that carry a numeric `key` (train lines or eval lines)."""
    points = [(r["step"], r[key]) for r in records
              if "event" not in r and isinstance(r.get(key), (int, float)) and "step" in r]
    return [s for s, _ in points], [float(v) for _, v in points]


def _save_figure(curves: dict[str, tuple[list[int], list[float]]], ylabel: str, title: str, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_metrics(run_dir: Path) -> list[Path]:
    """Write plots/loss.png (train loss, and eval loss if logged), reward.png for RL runs (`plot_rewards`),
    lr.png and grad_norm.png."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    steps, losses = _series(records, "loss")
    if not steps:
        raise PolmError("no training loss to plot", where=str(run_dir / METRICS_FILE),
                        fix="Point at a run directory whose training logged at least one step.")
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    curves = {"train": (steps, losses)}
    eval_steps, eval_losses = _series(records, "eval/loss")
    if eval_steps:
        curves["eval"] = (eval_steps, eval_losses)
    written = [_save_figure(curves, "loss (mean per target token or pair)", f"Loss — {run_dir.name}", out / "loss.png")]
    reward = plot_rewards(run_dir, records)
    if reward is not None:
        written.append(reward)
    for key, label in (("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)")):
        xs, ys = _series(records, key)
        if xs:
            written.append(_save_figure({key: (xs, ys)}, label, f"{label.capitalize()} — {run_dir.name}",
                                        out / f"{key}.png"))
    return written


def plot_rewards(run_dir: Path, records: list[dict] | None = None) -> Path | None:
    """plots/reward.png of an RL run: the total reward mean (reward/mean) and each reward's mean
    (reward/<name>/mean) per step; None when the run logged no reward."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if records is None else records
    keys = sorted({k for r in records for k in r if k.startswith("reward/") and k.endswith("/mean")})
    if not keys:
        return None
    curves = {("total" if key == "reward/mean" else key[len("reward/"):-len("/mean")]): _series(records, key)
              for key in keys}
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    return _save_figure(curves, "mean reward per sample", f"Reward — {run_dir.name}", run_dir / "plots" / "reward.png")
