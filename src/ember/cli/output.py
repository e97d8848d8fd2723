"""Printing for the CLI: rich tables for people, `--json` for programs (one JSON document on stdout)."""

import json
import sys

from rich.console import Console

from ember.cli.tables import Col, print_table

console = Console()
__all__ = ["Col", "console", "human_count", "human_size", "print_json", "table"]


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def table(title: str | None, columns: list, rows: list[list]) -> None:
    """A table fitted to the terminal; columns are header strings or `Col`s (cli/tables.py)."""
    print_table(title, columns, rows, console)


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def human_count(n: int | None) -> str:
    if not n:
        return ""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"
