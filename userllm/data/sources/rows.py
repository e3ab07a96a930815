"""Vectorised row checks shared by every reader, and the join of events with the item table.

A reader scans its files into text columns named canonically, plus `source_line`; then
`finish_items` checks and deduplicates the item table, and `finish_events` types the events, says
which rows are bad and why, adds title and categories, and ends in the canonical schema. Each file
is read once: bad rows are reported to `InputIssues` from that pass, and the good rows stay in memory
behind a lazy frame (the timelines need all of them anyway).
Keeping detection in polars expressions is what lets a 20M-row file be checked in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from userllm.data.issues import BadInputError, InputIssues
from userllm.data.schema import MAX_TIMESTAMP, MIN_TIMESTAMP, SOURCE_LINE, to_canonical

ITEM_COLUMNS = ("item_id", "title", "categories")
_REASON = "_reason"
_TIME_UNITS = {"s": ("seconds", 1), "ms": ("milliseconds", 1000)}
_IN_META = "_in_meta"


@dataclass(frozen=True, eq=False)
class Check:
    """A rule a row can break: `bad` is true on offending rows; the first broken rule is reported."""

    reason: str
    bad: pl.Expr
    expected: str


def drop_bad_rows(frame: pl.LazyFrame, checks: Sequence[Check], path: Path, issues: InputIssues,
                  what: str) -> pl.LazyFrame:
    """Report the rows of `path` that break a check (first broken check wins) and drop them.

    Reads the file once, in canonical form plus the broken check's index, and reports from that
    frame in memory: the timelines read every row anyway, and a separate counting pass over the
    file cost as much as everything after it. The returned frame is a lazy view of the good rows.
    """
    flagged = to_canonical(_flag(frame, checks), extra=[_REASON]).collect(engine="streaming")
    bad = _report(flagged.lazy(), checks, path, issues, what)
    good = flagged.filter(pl.col(_REASON).is_null()) if bad else flagged
    return good.drop(_REASON).lazy()


def _flag(frame: pl.LazyFrame, checks: Sequence[Check]) -> pl.LazyFrame:
    """Add the index of the first broken check: small integers keep this cheap on 20M rows."""
    reason = pl.coalesce(pl.when(check.bad).then(pl.lit(i, dtype=pl.UInt8)) for i, check in enumerate(checks))
    return frame.with_columns(reason.alias(_REASON))


def _report(flagged: pl.LazyFrame, checks: Sequence[Check], path: Path, issues: InputIssues, what: str) -> int:
    """Count and locate the flagged rows, earliest first, so strict mode names the first bad line.

    A file without a single row is a hard error: nothing sensible can be built from it. Returns
    the number of bad rows.
    """
    stats = (
        flagged.group_by(_REASON)
        .agg(pl.len().alias("rows"), pl.col(SOURCE_LINE).bottom_k(issues.max_examples).sort().alias("lines"))
        .collect(engine="streaming")
    )
    total = int(stats["rows"].sum())
    if total == 0:
        raise BadInputError(f"{path}: no rows (expected {what})")
    bad = stats.filter(pl.col(_REASON).is_not_null()).sort(pl.col("lines").list.first())
    for code, rows, lines in bad.iter_rows():
        issues.report(checks[code].reason, path, lines, total=rows, expected=checks[code].expected)
    bad_rows = int(bad["rows"].sum())
    issues.check_share(path, bad_rows, total)
    return bad_rows


def is_blank(column: str) -> pl.Expr:
    """Null or only whitespace: a field that is as good as missing."""
    return pl.col(column).is_null() | ~pl.col(column).str.contains(r"\S")


def _typed_events(frame: pl.LazyFrame, fields: Mapping[str, str], time_unit: str,
                  rating_required: bool) -> tuple[pl.LazyFrame, list[Check]]:
    """Type the text columns timestamp and rating, and the checks that guard all four fields.

    `fields` maps the canonical names to the publisher's, so that a reason names the field the
    user sees in the file. Timestamps may be fractional (RecBole writes floats), in seconds or
    milliseconds; they become whole seconds, and one outside the schema's window counts as corrupt.
    The text stays beside the parsed value because the checks need both; each is parsed once.
    """
    unit_name, per_second = _TIME_UNITS[time_unit]
    time_text, rating_text, seconds = "_timestamp_text", "_rating_text", "_seconds"
    in_range = pl.col(seconds).is_between(MIN_TIMESTAMP, MAX_TIMESTAMP)
    checks = [
        Check(f"missing field {fields['user_id']}", is_blank("user_id"), "a user id"),
        Check(f"missing field {fields['item_id']}", is_blank("item_id"), "an item id"),
        Check(f"missing field {fields['timestamp']}", is_blank(time_text), "a timestamp"),
        Check("timestamp not a number", _not_a_number(time_text, seconds), "a number"),
        Check("timestamp out of range", ~in_range, f"{unit_name} since 1970, in the years 1990 to 2100"),
        Check("rating not a number", _not_a_number(rating_text, "rating") & ~is_blank(rating_text), "a number"),
    ]
    if rating_required:
        checks.insert(3, Check(f"missing field {fields['rating']}", is_blank(rating_text), "a rating"))
    typed = frame.rename({"timestamp": time_text, "rating": rating_text}).with_columns(
        (_number(time_text) / per_second).alias(seconds), _number(rating_text).alias("rating"),
    ).with_columns(pl.when(in_range).then(pl.col(seconds).floor()).cast(pl.Int64).alias("timestamp"))
    return typed, checks


def _number(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Float64, strict=False)


def _not_a_number(text: str, parsed: str) -> pl.Expr:
    """Present, yet not a finite number: "abc", "", "nan", "inf", " 3" (no padding, as in polars)."""
    return pl.col(text).is_not_null() & (pl.col(parsed).is_null() | ~pl.col(parsed).is_finite())


def finish_items(items: pl.LazyFrame, checks: Sequence[Check], path: Path, issues: InputIssues,
                 id_field: str, what: str) -> pl.LazyFrame:
    """Drop bad item rows, keep the first row per item id, and hold the result in memory.

    The item table is small beside its meta file (Amazon's carries descriptions, images, ranks),
    and the events are joined with it twice, so one pass over the file beats re-reading it.
    Amazon 2018 meta files list some products twice; the first entry is as good as any and keeping
    one is what stops the join from duplicating events.
    """
    item_checks = [*checks, Check(f"missing field {id_field}", is_blank("item_id"), "an item id")]
    columns = [name for name in ITEM_COLUMNS if name in items.collect_schema().names()]
    flagged = _flag(items, item_checks).select(*columns, SOURCE_LINE, _REASON).collect(engine="streaming")
    _report(flagged.lazy(), item_checks, path, issues, what)
    good = flagged.filter(pl.col(_REASON).is_null()).unique(subset="item_id", keep="first", maintain_order=True)
    return good.select(columns).lazy()


def _join_items(events: pl.LazyFrame, items: pl.LazyFrame, items_path: Path) -> tuple[pl.LazyFrame, Check]:
    """Attach the item table's columns to each event, and the check for items it does not list."""
    # Keeping the left order costs a third of the join on 20M rows; `source_line` keeps it anyway.
    joined = events.join(items.with_columns(pl.lit(True).alias(_IN_META)), on="item_id", how="left")
    check = Check("item not in meta file", pl.col(_IN_META).is_null(), f"an item listed in {items_path.name}")
    return joined, check


def finish_events(events: pl.LazyFrame, checks: Sequence[Check], path: Path, issues: InputIssues, *,
                  fields: Mapping[str, str], what: str, items: pl.LazyFrame | None = None,
                  items_path: Path | None = None, time_unit: str = "s",
                  rating_required: bool = True) -> pl.LazyFrame:
    """Type and check the events of `path`, attach `items`, drop bad rows, end in canonical form.

    `checks` are the format's own (malformed lines); they come before the field checks so that a
    broken line is reported as broken rather than as missing every field.
    """
    events, field_checks = _typed_events(events, fields, time_unit, rating_required)
    checks = [*checks, *field_checks]
    if items is not None:
        events, in_meta = _join_items(events, items, items_path)
        checks.append(in_meta)
    return drop_bad_rows(events, checks, path, issues, what)
