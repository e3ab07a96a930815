"""Vectorised row checks shared by every reader, and the canonical tables they end in.

A reader scans its files into text columns named canonically, plus `source_line`; then
`finish_items` checks and deduplicates the item table, and `finish_events` types the events, says
which rows are bad and why (an event of an item the item table lacks included) and ends in the
canonical `SourceData`. Each file is scanned once: one streaming pass yields both the good rows and,
per kind of bad row, its count and first lines for `InputIssues`. Keeping detection in polars
expressions is what lets a 20M-row file be checked in seconds. A reader whose format polars can
parse natively (MovieLens' ratings.csv) also hands a typed scan, tried first: a clean file then
needs no text columns at all, and one with a bad row is scanned again as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from userllm.data.issues import BadInputError, InputIssues
from userllm.data.schema import (
    EVENT_SCHEMA, ITEM_SCHEMA, MAX_TIMESTAMP, MIN_TIMESTAMP, SOURCE_LINE, SourceData, to_canonical,
)

_ID_COLUMNS = ("user_id", "item_id")
_REASON = "_reason"
_TIME_UNITS = {"s": ("seconds", 1), "ms": ("milliseconds", 1000)}


@dataclass(frozen=True, eq=False)
class Check:
    """A rule a row can break: `bad` is true on offending rows; the first broken rule is reported."""

    reason: str
    bad: pl.Expr
    expected: str


def drop_bad_rows(frame: pl.LazyFrame, checks: Sequence[Check], path: Path, issues: InputIssues, what: str,
                  schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The rows of `path` that break no check, in `schema`; the others are reported (first broken check wins).

    The good rows and the statistics of the bad ones come out of one streaming pass (polars
    shares the scan between the two results): no second pass over the file, and no column of
    reasons kept beside 20M good rows.
    """
    flagged = _flag(frame, checks)
    good = to_canonical(flagged.filter(pl.col(_REASON).is_null()), schema)
    stats = flagged.group_by(_REASON).agg(
        pl.len().alias("rows"), pl.col(SOURCE_LINE).bottom_k(issues.max_examples).sort().alias("lines")
    )
    good, stats = pl.collect_all([good, stats], engine="streaming")
    _report(stats, checks, path, issues, what)
    return good


def _flag(frame: pl.LazyFrame, checks: Sequence[Check]) -> pl.LazyFrame:
    """Add the index of the first broken check: small integers keep this cheap on 20M rows."""
    reason = pl.coalesce(pl.when(check.bad).then(pl.lit(i, dtype=pl.UInt8)) for i, check in enumerate(checks))
    return frame.with_columns(reason.alias(_REASON))


def _report(stats: pl.DataFrame, checks: Sequence[Check], path: Path, issues: InputIssues, what: str) -> None:
    """Report the bad rows counted in `stats` (rows and first lines per check), earliest first, so
    that strict mode names the first bad line.

    A file without a single row is a hard error: nothing sensible can be built from it.
    """
    total = int(stats["rows"].sum())
    if total == 0:
        raise BadInputError(f"{path}: no rows (expected {what})")
    bad = stats.filter(pl.col(_REASON).is_not_null()).sort(pl.col("lines").list.first())
    for code, rows, lines in bad.iter_rows():
        issues.report(checks[code].reason, path, lines, total=rows, expected=checks[code].expected)
    issues.check_share(path, int(bad["rows"].sum()), total)


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
    in_range = _in_window(pl.col(seconds))
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
    ).with_columns(pl.when(in_range).then(_whole(pl.col(seconds))).alias("timestamp"))
    return typed, checks


def _in_window(seconds: pl.Expr) -> pl.Expr:
    """Whether a time in (possibly fractional) seconds lies in the schema's window."""
    return seconds.is_between(MIN_TIMESTAMP, MAX_TIMESTAMP)


def _whole(seconds: pl.Expr) -> pl.Expr:
    """Whole seconds, rounded down, as the schema's integer timestamp."""
    return seconds.floor().cast(pl.Int64)


def _number(column: str) -> pl.Expr:
    """A text field as a number, as polars' CSV parser reads it: leading spaces and tabs are allowed
    (so that `scan_csv_typed` and the text path agree on every value), trailing ones are not."""
    return pl.col(column).str.strip_chars_start(" \t").cast(pl.Float64, strict=False)


def _not_a_number(text: str, parsed: str) -> pl.Expr:
    """Present, yet not a finite number: "abc", "", "nan", "inf", "3 "."""
    return pl.col(text).is_not_null() & (pl.col(parsed).is_null() | ~pl.col(parsed).is_finite())


def finish_items(items: pl.LazyFrame, checks: Sequence[Check], path: Path, issues: InputIssues,
                 id_field: str, what: str) -> pl.DataFrame:
    """The good rows of an item file in canonical form, the first row per item id.

    The item table is small beside its meta file (Amazon's carries descriptions, images, ranks),
    so it is held in memory. Amazon 2018 meta files list some products twice; the first entry is
    as good as any, and one row per item is what the item table promises.
    """
    item_checks = [*checks, Check(f"missing field {id_field}", is_blank("item_id"), "an item id")]
    good = drop_bad_rows(items, item_checks, path, issues, what, ITEM_SCHEMA)
    return good.unique(subset="item_id", keep="first", maintain_order=True)


def _unlisted(items: pl.DataFrame, items_path: Path) -> Check:
    """The check for events of items that `items` does not list: a lookup in a set of ids, where a
    join would copy every title and category list onto every event."""
    unlisted = ~pl.col("item_id").is_in(items["item_id"].implode())
    return Check("item not in meta file", unlisted, f"an item listed in {items_path.name}")


def finish_events(events: pl.LazyFrame, checks: Sequence[Check], path: Path, issues: InputIssues, *,
                  fields: Mapping[str, str], what: str, items: pl.DataFrame | None = None,
                  items_path: Path | None = None, time_unit: str = "s", rating_required: bool = True,
                  typed: pl.LazyFrame | None = None, schema: dict[str, pl.DataType] = EVENT_SCHEMA) -> SourceData:
    """Type and check the events of `path`, drop the bad ones, and pair them with `items`.

    `checks` are the format's own (malformed lines); they come before the field checks so that a
    broken line is reported as broken rather than as missing every field. With `items` (the
    finished item file at `items_path`), an event of an item it does not list is bad.
    `typed` is the same file scanned with polars parsing the numbers (`scan_csv_typed`): if given,
    it is tried first, and the text scan `events` is read only when a row is bad.
    `schema` is `EVENT_SCHEMA`, or `NUMBER_ID_SCHEMA` for a format whose ids are whole numbers
    (then `items` must list them as `whole_number_ids` writes them).
    """
    clean = None if typed is None else _all_good(typed, items, time_unit, rating_required, schema)
    if clean is None:
        events, field_checks = _typed_events(events, fields, time_unit, rating_required)
        if schema["user_id"].is_integer():
            events, id_checks = whole_number_ids(events, {name: fields[name] for name in _ID_COLUMNS})
            checks = [*checks, *id_checks]
        checks = [*checks, *field_checks]
        if items is not None:
            checks.append(_unlisted(items, items_path))
        clean = drop_bad_rows(events, checks, path, issues, what, schema)
    return SourceData(clean, pl.DataFrame(schema=ITEM_SCHEMA) if items is None else items)


def _all_good(typed: pl.LazyFrame, items: pl.DataFrame | None, time_unit: str, rating_required: bool,
              schema: dict[str, pl.DataType]) -> pl.DataFrame | None:
    """The canonical events of a scan that parsed the numbers itself, or None if any row is bad.

    The fast path for a big clean file: no text is kept for its numbers, which halves the time of
    reading it. It accepts what the checks of the text path accept, with the same values,
    so both paths give the same events; a row that breaks a check, or a value the scan cannot
    parse, sends the file down the text path, which says which rows are bad and why.
    """
    seconds, whole = _scanned_seconds(typed, time_unit)
    rating = pl.col("rating").is_finite()
    if not rating_required:
        rating = rating | pl.col("rating").is_null()
    good = pl.col("user_id").is_not_null() & pl.col("item_id").is_not_null() & _in_window(seconds) & rating
    if items is not None:
        listed = items["item_id"].cast(schema["item_id"], strict=False)
        good = good & pl.col("item_id").is_in(listed.implode())
    events = to_canonical(typed.with_columns(whole.alias("timestamp")), schema)
    try:
        events, verdict = pl.collect_all([events, typed.select(good.fill_null(False).all())], engine="streaming")
    except pl.exceptions.PolarsError:
        return None
    if events.height == 0 or not verdict.item() or _has_blank_ids(events):
        return None
    return events


def _scanned_seconds(typed: pl.LazyFrame, time_unit: str) -> tuple[pl.Expr, pl.Expr]:
    """The scan's timestamps in seconds, and in whole seconds (the canonical timestamp).

    Integer seconds are both already: the round trip through floats that other units need took
    0.3 s of CPU on 20M rows, for the same values.
    """
    per_second = _TIME_UNITS[time_unit][1]
    if per_second == 1 and typed.collect_schema()["timestamp"].is_integer():
        return pl.col("timestamp"), pl.col("timestamp")
    seconds = pl.col("timestamp") / per_second
    return seconds, _whole(seconds)


def _has_blank_ids(events: pl.DataFrame) -> bool:
    """Whether a user or item id is only whitespace: checked on the distinct ids, not on every event
    (keeping their order made polars' unique three times as fast). A number is never blank."""
    return any(
        events[name].unique(maintain_order=True).cast(pl.String).to_frame().select(is_blank(name).any()).item()
        for name in _ID_COLUMNS if not events[name].dtype.is_integer()
    )


def whole_number_ids(frame: pl.LazyFrame, fields: Mapping[str, str]) -> tuple[pl.LazyFrame, list[Check]]:
    """Ids that are whole numbers by the format's definition, as their plain decimal text ("7").

    `fields` maps the id columns to the publisher's names. An id reads as polars' CSV parser reads
    a number (leading spaces, a plus sign and leading zeros allowed: " +007" is 7), so that the text
    path and `scan_csv_typed` agree. One that is no such number, or is beyond UInt32, makes its row
    bad (the returned checks); a blank one becomes null, for the missing-field check.
    """
    texts = {name: f"_{name}_text" for name in fields}
    frame = frame.rename(texts).with_columns(
        pl.col(text).str.strip_chars_start(" \t").str.to_integer(strict=False).cast(pl.UInt32, strict=False)
        .cast(pl.String).alias(name)
        for name, text in texts.items()
    )
    checks = [Check(f"{field} not a whole number", pl.col(name).is_null() & ~is_blank(texts[name]),
                    "a whole number from 0 to 4294967295") for name, field in fields.items()]
    return frame, checks
