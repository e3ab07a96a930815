"""The canonical events table every reader produces and every later step consumes.

Readers own the quirks of a raw format; everything after them sees only these columns.
"""

from __future__ import annotations

import polars as pl

REQUIRED_COLUMNS: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "timestamp": pl.Int64(),  # seconds since the epoch, UTC
    "rating": pl.Float32(),  # null where the source has none
}

OPTIONAL_COLUMNS: dict[str, pl.DataType] = {
    "title": pl.String(),
    "categories": pl.List(pl.String()),
    "review_title": pl.String(),
    "review_text": pl.String(),
}

EVENT_SCHEMA: dict[str, pl.DataType] = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}

# Row provenance the readers attach so that bad rows and ties can be traced to the file.
SOURCE_LINE = "source_line"  # 1-based line number in the raw interactions file, u32/i64

# Timestamps outside this window are treated as corrupt: before 1990 there were no web logs to speak
# of, and anything after 2100 is a unit error (milliseconds or microseconds read as seconds).
MIN_TIMESTAMP = 631_152_000  # 1990-01-01
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01


def to_canonical(frame: pl.LazyFrame, extra: list[str] | None = None) -> pl.LazyFrame:
    """Cast to the canonical dtypes, add missing optional columns as nulls, fix the column order.

    `extra` columns (a reader's bookkeeping) are kept after the canonical ones, as they are.
    """
    names = frame.collect_schema().names()
    columns = []
    for name, dtype in EVENT_SCHEMA.items():
        if name in names:
            columns.append(pl.col(name).cast(dtype))
        else:
            columns.append(pl.lit(None, dtype=dtype).alias(name))
    if SOURCE_LINE in names:
        columns.append(pl.col(SOURCE_LINE).cast(pl.Int64))
    return frame.select(*columns, *(extra or []))
