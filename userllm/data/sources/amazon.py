"""Amazon Reviews, as published by McAuley's lab: the 2018 release and the 2023 release.

Both ship one reviews file and one meta file per product category, as JSON lines (gzipped as
downloaded). 2018 keys reviews by `asin` with times in seconds; 2023 keys them by `parent_asin`
(the product, not its colour or size variant) with times in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from userllm.data.issues import InputIssues
from userllm.data.schema import SourceData
from userllm.data.sources.jsonlines import ReviewDump, read_review_dump
from userllm.data.sources.rawfiles import find_file, json_names
from userllm.data.sources.rows import is_blank

_STRINGS = pl.List(pl.String())

AMAZON_2018 = ReviewDump(
    events={"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime", "rating": "overall",
            "review_title": "summary", "review_text": "reviewText"},
    time_unit="s",
    item_id="asin",
    item_fields={"title": pl.String(), "category": _STRINGS},
    # The path's first entry is the file's own top-level category ("Movies & TV" for every item of
    # Movies_and_TV): it carries no information and would win every favourite-category count.
    item_columns={"categories": pl.col("category").list.slice(1)},
)


def _categories_2023() -> pl.Expr:
    """The category path when there is one; many products only carry a `main_category`."""
    path, main = pl.col("categories"), pl.col("main_category")
    return (
        pl.when(path.list.len() > 0).then(path)
        .when(~is_blank("main_category")).then(pl.concat_list(main))
        .otherwise(pl.lit([], dtype=_STRINGS))
    )


AMAZON_2023 = ReviewDump(
    events={"user_id": "user_id", "item_id": "parent_asin", "timestamp": "timestamp", "rating": "rating",
            "review_title": "title", "review_text": "text"},
    time_unit="ms",
    item_id="parent_asin",
    item_fields={"title": pl.String(), "categories": _STRINGS, "main_category": pl.String()},
    item_columns={"categories": _categories_2023()},
)


def read_amazon_2018(raw_dir: Path, issues: InputIssues, category: str = "Movies_and_TV") -> SourceData:
    """`<category>.json.gz` (all reviews) or `<category>_5.json.gz` (5-core), with `meta_<category>`.

    The full file wins when both are there: the timeline step applies its own minimum.
    """
    reviews = find_file(raw_dir, json_names(category, f"{category}_5"), f"Amazon 2018 reviews of {category}")
    meta = find_file(raw_dir, json_names(f"meta_{category}"), f"Amazon 2018 metadata of {category}")
    return read_review_dump(reviews, meta, AMAZON_2018, issues)


def read_amazon_2023(raw_dir: Path, issues: InputIssues, category: str = "Movies_and_TV") -> SourceData:
    """`<category>.jsonl.gz` with `meta_<category>.jsonl.gz`."""
    reviews = find_file(raw_dir, json_names(category), f"Amazon 2023 reviews of {category}")
    meta = find_file(raw_dir, json_names(f"meta_{category}"), f"Amazon 2023 metadata of {category}")
    return read_review_dump(reviews, meta, AMAZON_2023, issues)
