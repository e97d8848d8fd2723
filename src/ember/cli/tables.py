"""Tables that fit the terminal: names and references are never cut; less important columns give way first.

    COLUMNS=80 ember models list        # version, aliases, kind, size, ... as many as fit
    ember models list --json            # every field, whatever the width

A column is a `Col`: `full=True` for what the table exists to show (references, names, ids: shown whole,
never wrapped); `drop=N > 0` for columns that may be left out when the terminal is too narrow (the highest
N goes first, as `docker images` and `ollama list` keep the name and give up the rest); the others stay and
wrap (`overflow="fold"`, never an ellipsis that hides text). Plain strings are columns that stay and wrap.
"""

from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Col:
    header: str
    full: bool = False  # never cut, never wrapped (unless the full columns alone do not fit)
    drop: int = 0  # > 0: may be left out when narrow; higher numbers go first
    justify: str = "left"


WRAP_MIN = 12  # a wrapping column is given at least this many cells (or its natural width, if smaller)


def _natural(header: str, values: list[str]) -> int:
    return max(cell_len(line) for v in [header, *values] for line in (v.splitlines() or [""]))


def _build(title, cols: list[Col], cells: list[list[str]], shown: list[int], fold_full: bool) -> Table:
    t = Table(title=title)
    for i in shown:
        c = cols[i]
        if c.full and fold_full:
            t.add_column(c.header, overflow="fold", justify=c.justify)
        elif c.full or c.drop:  # shown whole or not at all
            t.add_column(c.header, no_wrap=True, min_width=_natural(c.header, [r[i] for r in cells]),
                         justify=c.justify)
        else:
            t.add_column(c.header, overflow="fold", justify=c.justify)
    for r in cells:
        t.add_row(*[r[i] for i in shown])
    return t


def _needed(cols: list[Col], cells: list[list[str]], shown: list[int]) -> int:
    """Cells the shown columns need at least: whole full/droppable columns, a little of each wrapping one, and
    the default box (a border left of each column and at the right, one space of padding each side)."""
    total = 1
    for i in shown:
        n = _natural(cols[i].header, [r[i] for r in cells])
        total += 3 + (n if cols[i].full or cols[i].drop else min(n, WRAP_MIN))
    return total


def render(title: str | None, columns: list, rows: list[list], console: Console) -> Table:
    """The table with the columns that fit `console.width` (see the module docstring)."""
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    cells = [["" if v is None else str(v) for v in r] for r in rows]
    shown = list(range(len(cols)))
    # Least important first: highest drop number, then the rightmost.
    droppable = sorted((i for i, c in enumerate(cols) if c.drop > 0), key=lambda i: (-cols[i].drop, -i))
    while droppable and _needed(cols, cells, shown) > console.width:
        shown.remove(droppable.pop(0))
    full = [i for i in shown if cols[i].full]
    # If even the full columns cannot fit, fold them rather than crop them.
    return _build(title, cols, cells, shown, fold_full=bool(full) and _needed(cols, cells, full) > console.width)


def print_table(title: str | None, columns: list, rows: list[list], console: Console) -> None:
    console.print(render(title, columns, rows, console))
