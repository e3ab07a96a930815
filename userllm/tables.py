"""Result tables as text: GitHub markdown for people, CSV for scripts. One format for every stage."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any


def markdown_cell(value: Any) -> str:
    """Floats with 4 decimals, None empty; `|` escaped, since override values may contain it."""
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict[str, Any]], empty: str = "no rows") -> str:
    """A GitHub-style table of `rows` (columns from the first row), readable in a terminal too."""
    if not rows:
        return empty + "\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(markdown_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], empty_header: Sequence[str] = ("job",)) -> str:
    """The rows as CSV with a header line, every value at full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else list(empty_header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
