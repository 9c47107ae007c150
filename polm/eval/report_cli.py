"""`polm report RUN_DIR...`: report.html with PNG plots (training curves, eval metrics with CIs).

    polm report runs/sft                       # writes runs/sft/report.html and runs/sft/plots/
    polm report runs/sft runs/eval-ab --out runs/report
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="training run directories and/or `polm eval --out` directories")
    parser.add_argument("--out", default=None,
                        help="where report.html goes (default: the run directory when there is one, "
                             "else runs/report-<time>)")


def run(args: argparse.Namespace) -> int:
    from polm.eval.report import build_report

    dirs = [Path(d) for d in args.run_dirs]
    default = dirs[0] if len(dirs) == 1 else Path(f"runs/report-{time.strftime('%Y%m%d-%H%M%S')}")
    path = build_report(dirs, Path(args.out) if args.out else default)
    print(f"report: {path}")
    return 0
