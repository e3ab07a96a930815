"""The canonical tables every reader produces and every later step consumes.

Readers own the quirks of a raw format; everything after them sees only these columns: the events,
one row per interaction, and the items, one row per item the source describes. Titles and
categories live only in the item table: copied onto every event, they were most of the memory a
20M-row dataset took, and the timelines need them once per item anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

# Row provenance the readers attach so that bad rows and ties can be traced to the file.
SOURCE_LINE = "source_line"  # 1-based line number in the raw interactions file

# Ids are categoricals: each distinct id's text is stored once and an event holds 4 bytes per id
# where a string takes 16 (the two id columns of 20M events: 160 MB instead of 640 MB).
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Categorical(),
    "item_id": pl.Categorical(),
    "timestamp": pl.Int64(),  # seconds since the epoch, UTC
    "rating": pl.Float32(),  # null where the source has none
    "review_title": pl.String(),  # null where the source has none, as the review text
    "review_text": pl.String(),
    SOURCE_LINE: pl.UInt32(),  # polars' row index type: 4 bytes per event, not 8
}

# Formats whose ids are whole numbers by definition (MovieLens) hand them on as numbers instead:
# polars parses 20M numbers in two thirds of the time it takes to build categoricals, and the
# timelines treat a number as the id written in decimal.
NUMBER_ID_SCHEMA: dict[str, pl.DataType] = {**EVENT_SCHEMA, "user_id": pl.UInt32(), "item_id": pl.UInt32()}

ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),  # null where the source has none
    "categories": pl.List(pl.String()),  # in the source's order; null or empty where it has none
}

# Timestamps outside this window are treated as corrupt: before 1990 there were no web logs to speak
# of, and anything after 2100 is a unit error (milliseconds or microseconds read as seconds).
MIN_TIMESTAMP = 631_152_000  # 1990-01-01
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01


@dataclass(frozen=True)
class SourceData:
    """What a reader hands on: the good events (`EVENT_SCHEMA` or `NUMBER_ID_SCHEMA`, in no guaranteed
    row order) and the items (`ITEM_SCHEMA`, one row per item id; empty where the source lists none).

    `timelines.build` consumes `events`, moving its columns out as it goes so their memory is freed early.
    """

    events: pl.DataFrame
    items: pl.DataFrame


def to_canonical(frame: pl.LazyFrame, schema: dict[str, pl.DataType] = EVENT_SCHEMA) -> pl.LazyFrame:
    """Cast to `schema`'s dtypes, add its missing columns as nulls, drop the rest, fix the order."""
    names = frame.collect_schema().names()
    return frame.select(
        pl.col(name).cast(dtype) if name in names else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in schema.items()
    )
