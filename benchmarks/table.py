"""The benchmark table: rows -> markdown, written into docs/benchmarks.md between two markers.

The page around the markers is prose kept by hand (what each row means, how to run the GPU check); only the
part between ``BEGIN`` and ``END`` is generated. The new page is written to a temporary file in the same folder
and renamed over the old one, so an interrupted ``make bench`` leaves the previous page whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from harness import Row, Skipped

BEGIN = "<!-- make bench: generated table begins (benchmarks/run_all.py rewrites what is between these lines) -->"
END = "<!-- make bench: generated table ends -->"

COLUMNS = ("what is measured", "same-run baseline", "ratio: median (min-max, rounds)", "goal", "command", "notes")


class TableError(ValueError):
    """The page cannot take the table (markers missing, doubled or out of order)."""


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _goal(row: Row) -> str:
    if row.goal is None:
        return "none (reported)"
    return f"{row.goal.format()}: {'met' if row.met else '**missed**'}"


def _notes(row: Row) -> str:
    parts = [row.note]
    if row.met is False and row.if_missed:
        parts.append(f"Missed: {row.if_missed}")
    return " ".join(p for p in parts if p)


def render_rows(rows: Sequence[Row | Skipped]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if isinstance(row, Skipped):
            cells = (row.measured, "not measured", "not measured", "-", f"`{row.command}`",
                     f"Skipped: {row.reason}")
        else:
            measured = f"{row.measured}; {row.value}" if row.value else row.measured
            ratio = f"{row.ratio.format(suffix=row.unit)} = {row.ratio_of}"
            cells = (measured, row.baseline, ratio, _goal(row), f"`{row.command}`", _notes(row))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render_section(rows: Sequence[Row | Skipped], facts: Sequence[str]) -> str:
    """The generated part: the table, then one line per fact about the run (machine load, commit, time)."""
    return "\n".join([BEGIN, "", render_rows(rows), "", *[f"- {fact}" for fact in facts], "", END])


def replace_section(page: str, section: str, *, where: str = "the page") -> str:
    begins, ends = page.count(BEGIN), page.count(END)
    if begins != 1 or ends != 1 or page.index(BEGIN) > page.index(END):
        raise TableError(f"{where}: needs exactly one '{BEGIN}' line followed by one '{END}' line "
                         f"(found {begins} and {ends})")
    head, rest = page.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + section + tail


def write_table(path: Path, rows: Sequence[Row | Skipped], facts: Sequence[str]) -> None:
    """Put the table into ``path`` (between the markers; a new page gets a title and the markers), atomically."""
    from kubefusion.train.atomic import atomic_write_text

    path = Path(path)
    page = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    text = replace_section(page, render_section(rows, facts), where=str(path))
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    atomic_write_text(path, text)
    os.chmod(path, mode)  # the temporary file was created 0600
