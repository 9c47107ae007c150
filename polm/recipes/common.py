"""Command-line plumbing shared by recipes: `polm <recipe> [CONFIG.yaml] [key=value ...]`."""

from __future__ import annotations

import argparse
from typing import TypeVar

from polm.config import load_config

T = TypeVar("T")


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("items", nargs="*", metavar="CONFIG|key=value",
                        help=f"a YAML config (e.g. {example}) followed by dotted overrides such as lora.r=16")


def config_from_args(cls: type[T], args: argparse.Namespace, extra: list[str] | None = None) -> T:
    """First positional argument without '=' is the YAML file; the rest are overrides."""
    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else None
    return load_config(cls, path, items + list(extra or []))
