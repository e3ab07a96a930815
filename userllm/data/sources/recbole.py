"""RecBole atomic files: `<name>.inter` (interactions) and optionally `<name>.item` (items).

Tab-separated with a header of `field:type` pairs; `token_seq` fields are space-separated lists.
The defaults ship MovieLens-100K in this form (the RecBole wheel on PyPI), so its field names
(`movie_title`, `release_year`, `class`) are understood alongside the generic ones.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from userllm.data.issues import BadInputError, InputIssues
from userllm.data.schema import SourceData
from userllm.data.sources.rawfiles import (
    field_count_check, find_file, first_line, scan_lines, split_fields, split_list,
)
from userllm.data.sources.rows import finish_events, finish_items

_REQUIRED = ("user_id", "item_id", "timestamp")
_FIELD_NAMES = {name: name for name in (*_REQUIRED, "rating")}  # RecBole's names are ours
_TITLE_FIELDS = ("movie_title", "title")
_CATEGORY_FIELDS = ("class", "genre", "categories")
_WHAT = "RecBole atomic file (tab-separated, header of field:type)"


def read_recbole(raw_dir: Path, issues: InputIssues, name: str) -> SourceData:
    """Canonical events from `<name>.inter`, and items from `<name>.item` if present."""
    inter = find_file(raw_dir, [f"{name}.inter"], f"RecBole interactions of {name}")
    fields = _header(inter)
    missing = [field for field in _REQUIRED if field not in fields]
    if missing:
        raise BadInputError(f"{inter}:1: header lacks {', '.join(missing)} (expected fields user_id, item_id, "
                            "timestamp and optionally rating, each as name:type)")
    events = _scan(inter, fields)
    if "rating" not in fields:
        events = events.with_columns(pl.lit(None, dtype=pl.String).alias("rating"))
    item_path = Path(raw_dir) / f"{name}.item"
    items = _read_items(item_path, issues) if item_path.is_file() else None
    return finish_events(
        events, [field_count_check(len(fields), "\t")], inter, issues, fields=_FIELD_NAMES, what=_WHAT,
        items=items, items_path=item_path, rating_required="rating" in fields,
    )


def _header(path: Path) -> list[str]:
    """Field names without their `:type`."""
    return [column.split(":")[0] for column in first_line(path).split("\t")]


def _scan(path: Path, fields: list[str]) -> pl.LazyFrame:
    """The file's rows after the header as text columns named by the header."""
    return split_fields(scan_lines(path), "\t", fields).filter(pl.col("source_line") > 1)


def _read_items(path: Path, issues: InputIssues) -> pl.DataFrame:
    """Items with a title and categories, where the header has fields that hold them.

    RecBole's MovieLens files split "Toy Story (1995)" into movie_title and release_year; they are
    joined back so that titles read the same as in the GroupLens files.
    """
    fields = _header(path)
    if "item_id" not in fields:
        raise BadInputError(f"{path}:1: header lacks item_id (expected fields item_id, then any of "
                            f"{', '.join(_TITLE_FIELDS + _CATEGORY_FIELDS)}, each as name:type)")
    items = _scan(path, fields)
    title = next((field for field in _TITLE_FIELDS if field in fields), None)
    if title is not None:
        items = items.with_columns(_with_year(title, "release_year" in fields).alias("title"))
    categories = next((field for field in _CATEGORY_FIELDS if field in fields), None)
    if categories is not None:
        items = items.with_columns(split_list(categories, " ").alias("categories"))
    return finish_items(items, [field_count_check(len(fields), "\t")], path, issues, "item_id", _WHAT)


def _with_year(title: str, has_year: bool) -> pl.Expr:
    """`title (year)` where the year is four digits, else the title alone."""
    if not has_year:
        return pl.col(title)
    year = pl.col("release_year")
    with_year = pl.format("{} ({})", pl.col(title), year)
    return pl.when(year.str.contains(r"^\d{4}$")).then(with_year).otherwise(pl.col(title))
