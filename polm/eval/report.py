"""An HTML report with PNG plots for run directories: training curves (metrics.jsonl), in-training
eval curves, metric bars with 95% CIs per model, per-category breakdowns and paired differences.

It reads what polm writes: `metrics.jsonl` of a training run, `results.json` of `polm eval --out`,
per-task entries under `eval/` (from `polm.eval.runner.evaluate(out_dir=run_dir / "eval")`), and the
retention of the facts the model knew before training, `retention/retention.json` (from `polm knowledge
retention`, or a knowledge-curriculum condition).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polm.errors import PolmError
from polm.eval.runner import slug
from polm.io import atomic_file, atomic_write_text


@dataclass
class RunData:
    """What one run directory holds that a report can show."""

    path: Path
    metrics: list[dict] = field(default_factory=list)           # metrics.jsonl lines
    entries: list[dict] = field(default_factory=list)           # eval entries (one model × task each)
    comparisons: list[dict] = field(default_factory=list)       # paired differences from polm eval
    judgements: list[dict] = field(default_factory=list)        # LLM-judge win rates from polm eval
    retention: Path | None = None                               # retention.json of polm knowledge retention


def read_run(path: Path) -> RunData:
    if not path.is_dir():
        raise PolmError(f"run directory '{path}' does not exist", fix="Pass directories written by polm.")
    run = RunData(path)
    metrics_file = path / "metrics.jsonl"
    if metrics_file.is_file():
        from polm.train.metrics import read_metrics

        run.metrics = read_metrics(path)
    for results in (path / "results.json", path / "eval" / "results.json"):
        if results.is_file():
            summary = _read_json(results)
            run.entries += [e for r in summary.get("results", []) for e in r.get("tasks", {}).values()]
            run.comparisons += summary.get("comparisons", [])
            run.judgements += [summary["judge"]] if "judge" in summary else []
    if not run.entries:
        run.entries = [e for e in map(_read_json, sorted((path / "eval").glob("*.json")))
                       if isinstance(e, dict) and "metrics" in e and "task" in e]
    found = [p for p in (path / "retention" / "retention.json", path / "retention.json") if p.is_file()]
    run.retention = found[0] if found else None
    if not run.metrics and not run.entries and not run.judgements and run.retention is None:
        raise PolmError(f"'{path}' holds neither metrics.jsonl, evaluation results nor retention/retention.json",
                        fix="Point at a training run directory, a `polm eval --out` directory or a run with a "
                            "`polm knowledge retention` result.")
    return run


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PolmError(f"not valid JSON ({err.msg})", where=f"{path}:{err.lineno}",
                        fix="Re-run the command that wrote it.") from None


# --- plots ----------------------------------------------------------------------------------------

def _figure(width: float = 7, height: float = 4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_metric_bars(task: str, entries: list[dict], path: Path) -> Path:
    """One bar per model: the task's primary metric with its 95% bootstrap CI as error bar."""
    metric = entries[0]["primary_metric"]
    stats = [e["metrics"][metric] for e in entries]
    labels = [_short(e["model"]) for e in entries]
    fig = _figure(max(4.0, 1.6 * len(entries) + 2), 3.6)
    ax = fig.add_subplot()
    values = [s["value"] for s in stats]
    errors = [[v - s["ci_low"] for v, s in zip(values, stats)], [s["ci_high"] - v for v, s in zip(values, stats)]]
    ax.bar(range(len(values)), values, yerr=errors, capsize=6, color="#4c72b0")
    for x, (v, s) in enumerate(zip(values, stats)):
        ax.annotate(f"{v:.3g}\nn={s['n']}", (x, v), textcoords="offset points", xytext=(12, 4), fontsize=8)
    ax.set_xticks(range(len(values)), labels, rotation=15, ha="right")
    ax.set(ylabel=f"{metric} (95% CI)", title=f"{task}")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_categories(task: str, entries: list[dict], path: Path) -> Path:
    """Grouped bars: the primary metric per category (gpqa domain, ...) for each model, with CIs."""
    cats = sorted({c for e in entries for c in e["categories"]})
    fig = _figure(max(6.0, 1.2 * len(cats) + 3), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(entries)
    for j, entry in enumerate(entries):
        stats = [entry["categories"].get(c) for c in cats]
        xs = [i + j * width for i in range(len(cats))]
        vals = [s["value"] if s else 0.0 for s in stats]
        errs = [[v - s["ci_low"] if s else 0 for v, s in zip(vals, stats)],
                [s["ci_high"] - v if s else 0 for v, s in zip(vals, stats)]]
        ax.bar(xs, vals, width=width, yerr=errs, capsize=3, label=_short(entry["model"]))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))],
                  [f"{c}\n(n={entries[0]['categories'].get(c, {}).get('n', 0)})" for c in cats], fontsize=8)
    ax.set(ylabel=entries[0]["primary_metric"], title=f"{task} by category")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_eval_curves(run: RunData, path: Path) -> Path | None:
    """In-training eval metrics (keys eval/<task>/<metric> in metrics.jsonl) against the step."""
    keys = sorted({k for r in run.metrics for k in r if k.startswith("eval/") and k != "eval/loss"
                   and isinstance(r[k], (int, float))})
    if not keys:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for key in keys:
        points = [(r["step"], r[key]) for r in run.metrics if key in r and "step" in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=key[5:])
    ax.set(xlabel="optimizer step", ylabel="metric", title=f"In-training evaluation — {run.path.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _short(ref: str, width: int = 28) -> str:
    return ref if len(ref) <= width else "…" + ref[-(width - 1):]


# --- the page -------------------------------------------------------------------------------------

def build_report(run_dirs: list[Path], out: Path) -> Path:
    """Write out/report.html and out/plots/*.png for the runs; returns the HTML path."""
    runs = [read_run(Path(d)) for d in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    body = [f"<h1>polm report</h1><p>Runs: {', '.join(_code(str(r.path)) for r in runs)}</p>"]
    for run in runs:
        body.append(_training_section(run, out))
        body.append(_retention_section(run.retention, out) if run.retention else "")
    entries = [e for run in runs for e in run.entries]
    if entries:
        body.append(_eval_section(entries, out))
    comparisons = [c for run in runs for c in run.comparisons]
    if comparisons:
        body.append(_comparison_section(comparisons))
    judgements = [j for run in runs for j in run.judgements]
    if judgements:
        body.append(_judge_section(judgements))
    return atomic_write_text(out / "report.html", _PAGE.format(body="\n".join(b for b in body if b)))


def _training_section(run: RunData, out: Path) -> str:
    if not any("loss" in r for r in run.metrics):
        return ""
    from polm.train.plots import plot_metrics

    images = []
    for png in plot_metrics(run.path):
        target = out / "plots" / f"{slug(run.path.name)}-{png.name}"
        if png.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, target)
        images.append(target)
    curves = plot_eval_curves(run, out / "plots" / f"{slug(run.path.name)}-eval-curves.png")
    images += [curves] if curves else []
    last = [r for r in run.metrics if "loss" in r][-1]
    facts = ", ".join(f"{k} = {v:.4g}" for k, v in last.items() if isinstance(v, float))
    return (f"<h2>Training — {_code(str(run.path))}</h2><p>Last logged step {last.get('step')}: {facts}</p>"
            + "".join(_img(p, out) for p in images))


def _retention_section(path: Path, out: Path) -> str:
    """The numbers of retention.json, links to it and to its PNG, and the PNG itself."""
    r = _read_json(path)
    ret, lower = r["retention"], r["matrix"]["HighlyKnown"]
    rows = [[r["before"], r["after"], str(r["facts"]), str(r["highly_known_before"]), str(r["highly_known_lost"]),
             f"{lower['MaybeKnown']} / {lower['WeaklyKnown']} / {lower['Unknown']}", f"{ret['value']:.4g}",
             f"[{ret['ci_low']:.4g}, {ret['ci_high']:.4g}]", str(ret["n"])]]
    table = _table(["before", "after", "facts", "HighlyKnown before", "HighlyKnown -> lower",
                    "-> MaybeKnown / WeaklyKnown / Unknown", "retention", "95% CI", "n"], rows)
    png = path.parent / r["plot"]
    links = " · ".join(_link(p, out) for p in (path, png) if p.is_file())
    note = (f"<p>Retention = {html.escape(r['retention_metric'])} (the greedy exact-match accuracy over the "
            f"probe's k-shot prompts), bootstrap 95% CI over those facts. Files: {links}</p>")
    return (f"<h2>Retention — {_code(str(path.parent))}</h2>" + note + table
            + (_img(png, out) if png.is_file() else ""))


def _eval_section(entries: list[dict], out: Path) -> str:
    rows = []
    for e in entries:
        for metric, st in e["metrics"].items():
            rows.append([e["model"], e["task"], e.get("mode", ""), metric, f"{st['value']:.4g}",
                         f"[{st['ci_low']:.4g}, {st['ci_high']:.4g}]", str(st["n"]),
                         f"{e.get('samples_per_s', float('nan')):.2f}"])
    parts = ["<h2>Evaluation</h2>", _table(["model", "task", "mode", "metric", "value", "95% CI", "n", "samples/s"], rows)]
    by_task: dict[str, list[dict]] = {}
    for e in entries:
        by_task.setdefault(e["task"], []).append(e)
    for task, group in by_task.items():
        parts.append(f"<h3>{html.escape(task)}</h3>")
        parts.append(_img(plot_metric_bars(task, group, out / "plots" / f"eval-{slug(task)}.png"), out))
        if any(e.get("categories") for e in group):
            parts.append(_img(plot_categories(task, group, out / "plots" / f"eval-{slug(task)}-categories.png"), out))
    return "\n".join(parts)


def _comparison_section(comparisons: list[dict]) -> str:
    rows = [[c["model_b"] + " − " + c["model_a"], task, d["metric"], f"{d['diff']:+.4f}",
             f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]", str(d["n"])]
            for c in comparisons for task, d in c["tasks"].items()]
    note = "<p>Paired bootstrap over the same items; an interval that excludes 0 is a real difference.</p>"
    return "<h2>Paired differences</h2>" + note + _table(["models", "task", "metric", "difference", "95% CI", "n"], rows)


def _judge_section(judgements: list[dict]) -> str:
    rows = [[j["model_a"], j["model_b"], j["judge"], f"{j['win_rate']:.3f}", f"[{j['ci_low']:.3f}, {j['ci_high']:.3f}]",
             f"{j['wins']}/{j['ties']}/{j['losses']}", f"{j['consistent']}/{j['n']}"] for j in judgements]
    note = ("<p>Each pair judged in both orders; win rate counts a tie (or disagreeing orders) as 0.5.</p>")
    return "<h2>LLM-as-judge</h2>" + note + _table(
        ["model A", "model B", "judge", "A win rate", "95% CI", "wins/ties/losses", "orders agree"], rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, out: Path) -> str:
    rel = os.path.relpath(path, out)
    return f'<figure><img src="{html.escape(rel)}" alt="{html.escape(path.stem)}"></figure>'


def _link(path: Path, out: Path) -> str:
    rel = os.path.relpath(path, out)
    return f'<a href="{html.escape(rel)}">{html.escape(rel)}</a>'


def _code(text: str) -> str:
    return f"<code>{html.escape(text)}</code>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>polm report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""
