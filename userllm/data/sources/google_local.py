"""Google Local Reviews (2021 release, McAuley's lab): one reviews and one meta file per US state.

Reviews carry `gmap_id` (the place) and `time` in milliseconds; the place's name and categories are
in the meta file. The 10-core file (`review-<state>_10`) is as good as the full one for reading.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from userllm.data.issues import InputIssues
from userllm.data.schema import SourceData
from userllm.data.sources.jsonlines import ReviewDump, read_review_dump
from userllm.data.sources.rawfiles import find_file, json_names

GOOGLE_LOCAL = ReviewDump(
    events={"user_id": "user_id", "item_id": "gmap_id", "timestamp": "time", "rating": "rating",
            "review_text": "text"},
    time_unit="ms",
    item_id="gmap_id",
    item_fields={"name": pl.String(), "category": pl.List(pl.String())},
    item_columns={"title": pl.col("name"), "categories": pl.col("category")},
)


def read_google_local(raw_dir: Path, issues: InputIssues, state: str = "New_York") -> SourceData:
    """`review-<state>.json.gz` (all reviews) or `review-<state>_10.json.gz`, with `meta-<state>`.

    The full file wins when both are there: the timeline step applies its own minimum.
    """
    reviews = find_file(raw_dir, json_names(f"review-{state}", f"review-{state}_10"),
                        f"Google Local reviews of {state}")
    meta = find_file(raw_dir, json_names(f"meta-{state}"), f"Google Local metadata of {state}")
    return read_review_dump(reviews, meta, GOOGLE_LOCAL, issues)
