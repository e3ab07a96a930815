"""JSON-lines review dumps with a meta file beside them: Amazon 2018, Amazon 2023, Google Local.

The three families differ only in field names, the time unit and how categories are spelt, so each
reader describes its family in a `ReviewDump` and `read_review_dump` does the rest.

Lines are decoded by polars in one vectorised pass. Only when that fails (a malformed line, or a
field of an unexpected JSON type such as an object where a string belongs) is the file decoded
again tolerantly, to find and report the offending lines; this fallback holds the file's lines in
memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from userllm.data.issues import InputIssues
from userllm.data.schema import SOURCE_LINE, SourceData
from userllm.data.sources.rawfiles import LINE, scan_lines
from userllm.data.sources.rows import Check, finish_events, finish_items, is_blank

_MALFORMED = "_malformed_json"
_WRONG_TYPE = "_wrong_json_type"


@dataclass(frozen=True, eq=False)
class ReviewDump:
    """How one family of review dumps names things.

    events: canonical event column -> field of the reviews file (all read as text).
    item_id: the meta file's item id field; item_fields: the meta fields to decode, with types.
    item_columns: canonical item column (title, categories) -> expression over the decoded fields.
    """

    events: Mapping[str, str]
    time_unit: str
    item_id: str
    item_fields: Mapping[str, pl.DataType]
    item_columns: Mapping[str, pl.Expr]


def read_review_dump(reviews: Path, meta: Path, dump: ReviewDump, issues: InputIssues) -> SourceData:
    """Canonical events from a reviews file, and items from its meta file."""
    item_fields = {dump.item_id: pl.String(), **dump.item_fields}
    items, item_checks = scan_json_lines(meta, item_fields)
    items = items.with_columns(pl.col(dump.item_id).alias("item_id"), **dump.item_columns)
    items = finish_items(items, item_checks, meta, issues, dump.item_id, "JSON lines of item metadata")
    events, checks = scan_json_lines(reviews, {name: pl.String() for name in dump.events.values()})
    events = events.rename({raw: name for name, raw in dump.events.items()})
    return finish_events(
        events, checks, reviews, issues, fields=dump.events, what="JSON lines of reviews", items=items,
        items_path=meta, time_unit=dump.time_unit, rating_required=False,
    )


def scan_json_lines(path: Path, fields: Mapping[str, pl.DataType]) -> tuple[pl.LazyFrame, list[Check]]:
    """One column per field of each non-blank line's JSON object, plus `source_line`.

    A field a line lacks is null. Returns the checks that flag lines which could not be decoded;
    their fields are null too.
    """
    lines = scan_lines(path).filter(~is_blank(LINE))
    dtype = pl.Struct(fields)
    if _decodes(lines, dtype):
        return _decode(lines, dtype), []
    malformed = ~pl.col(LINE).str.json_path_match("$").str.starts_with("{").fill_null(False)
    well_formed = lines.filter(~malformed).collect(engine="streaming")
    wrong_type = pl.Series(_undecodable(well_formed, dtype), dtype=pl.UInt32).implode()
    flagged = lines.with_columns(
        malformed.alias(_MALFORMED), pl.col(SOURCE_LINE).is_in(wrong_type).alias(_WRONG_TYPE)
    )
    decodable = flagged.with_columns(
        pl.when(pl.col(_MALFORMED) | pl.col(_WRONG_TYPE)).then(None).otherwise(pl.col(LINE)).alias(LINE)
    )
    types = ", ".join(f"{name}: {'list of strings' if isinstance(t, pl.List) else 'string or number'}"
                      for name, t in fields.items())
    checks = [
        Check("malformed JSON", pl.col(_MALFORMED), "one JSON object per line"),
        Check("unexpected JSON type", pl.col(_WRONG_TYPE), types),
    ]
    return _decode(decodable, dtype), checks


def _decode(lines: pl.LazyFrame, dtype: pl.Struct) -> pl.LazyFrame:
    return lines.with_columns(pl.col(LINE).str.json_decode(dtype).alias(LINE)).unnest(LINE)


def _decodes(lines: pl.LazyFrame, dtype: pl.Struct) -> bool:
    """Whether every line decodes: the fast path, one streaming pass."""
    try:
        lines.select(pl.col(LINE).str.json_decode(dtype).is_null().sum()).collect(engine="streaming")
    except pl.exceptions.ComputeError:
        return False
    return True


def _undecodable(lines: pl.DataFrame, dtype: pl.Struct) -> list[int]:
    """Line numbers of the well-formed lines polars still cannot decode into `dtype`, by bisection.

    Polars names no line when decoding fails, and such lines are rare (an object where a string
    belongs), so halving the failing block until single lines remain costs a few passes.
    """
    try:
        lines.select(pl.col(LINE).str.json_decode(dtype))
    except pl.exceptions.ComputeError:
        if lines.height == 1:
            return [lines[SOURCE_LINE][0]]
        middle = lines.height // 2
        return _undecodable(lines[:middle], dtype) + _undecodable(lines[middle:], dtype)
    return []
