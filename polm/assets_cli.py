"""`polm assets list|prepare NAME`: the embedded offline models and datasets."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="show embedded assets and whether they are installed / prepared")
    prep = sub.add_parser("prepare", help="convert and cache an embedded model (or check a dataset)")
    prep.add_argument("name")


def run(args: argparse.Namespace) -> int:
    from polm import assets

    if args.action == "prepare":
        print(assets.prepare(args.name))
        return 0
    table = Table(title="polm embedded assets")
    for col in ("name", "kind", "package", "installed", "prepared", "path"):
        table.add_column(col)
    for row in assets.list_assets():
        table.add_row(*(str(row.get(k, "")) for k in ("name", "kind", "package", "installed", "prepared", "path")))
    Console().print(table)
    return 0
