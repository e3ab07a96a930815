"""Canonical events to per-user timelines: vocabularies, stable time order, protocol filter, split.

The output is a folder of parquet tables plus `meta.json`, written once and read by every later
stage. Users and their events are stored contiguously and sorted by time, so a user's timeline is a
slice `[offset, offset + n_events)` of the event arrays: the last event is the test target, the one
before it the validation target, and everything earlier is training data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from userllm.data.issues import InputIssues
from userllm.data.schema import SOURCE_LINE, SourceData

log = logging.getLogger(__name__)

PAD, UNKNOWN = 0, 1  # reserved ids in every feature vocabulary; real values start at 2
FEATURES = ("item", "rating", "category")  # the stored per-event features (one id each)
# Multi-valued features, derived from the item at load time: name -> the feature whose vocabulary
# they share. `categories` is every category of the event's item (`category` only the first listed).
MULTI_VALUED = {"categories": "category"}
MAX_VALUES = 16  # values kept per item for a multi-valued feature (the first listed)
META_FILE = "meta.json"
# Every stage reads the tables whole, so column statistics (for skipping row groups) go unused, and
# zstd's fastest level compresses the integer columns as well as its default: together they took a
# quarter off writing 18M events (1.05 -> 0.78 s of CPU) with the same file size.
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1, "statistics": False}
FORMAT_VERSION = 1  # bump when the artifact layout changes, so old folders are rebuilt


@dataclass(frozen=True)
class Protocol:
    """The choices that shape the artifacts: changing any of them rebuilds the folder."""

    min_events: int = 5  # users with fewer events are dropped (needs >= 3: train, val, test)

    def __post_init__(self) -> None:
        if self.min_events < 3:
            raise ValueError(
                f"data.min_events={self.min_events}: must be at least 3 (one training, one "
                "validation and one test event per user)"
            )


def fingerprint_files(raw_dir: Path) -> dict[str, dict]:
    """Name, size and modification time of every raw file: cheap, and changes when a file does."""
    files = sorted(p for p in raw_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    return {p.name: {"bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files}


def fingerprint(config: dict, raw_files: dict[str, dict]) -> str:
    """One hash over the config and the raw files: equal hashes mean the artifacts can be reused."""
    payload = json.dumps({"version": FORMAT_VERSION, "config": config, "raw": raw_files}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Timelines:
    """Prepared timelines in memory: event feature arrays plus user and item tables.

    `features[name][i]` is the id of feature `name` for event `i`; events are grouped by user in
    `users` order and sorted by time (ties keep the raw file order).
    """

    features: dict[str, np.ndarray]
    timestamps: np.ndarray
    offsets: np.ndarray  # user u's events are [offsets[u], offsets[u + 1])
    users: pl.DataFrame  # user (index), user_id
    items: pl.DataFrame  # item (id), item_id, title, categories, count
    vocab: dict[str, list[str]]  # rating and category values in id order, starting at id 2
    meta: dict = field(default_factory=dict)
    reviews: pl.DataFrame | None = None  # review_title, review_text per event, where the source has them
    folder: Path | None = None  # where the artifacts were loaded from

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def feature_names(self) -> list[str]:
        """Every feature `window` serves: the stored ones and the multi-valued ones."""
        return [*self.features, *MULTI_VALUED]

    def window(self, feature: str, start: int, end: int) -> np.ndarray:
        """Ids of `feature` for events `[start, end)`: shape [n] for a stored feature, [n, K] for a
        multi-valued one (each row the item's values, padded with 0)."""
        if feature in MULTI_VALUED:
            return self.item_category_ids[self.features["item"][start:end]]
        return self.features[feature][start:end]

    @cached_property
    def item_category_ids(self) -> np.ndarray:
        """[item vocabulary, K] category ids of every item, in listed order, 0-padded (K >= 1)."""
        ids = {name: i for i, name in enumerate(self.vocab["category"], start=2)}
        rows = [[ids.get(c, UNKNOWN) for c in cats[:MAX_VALUES]] for cats in self.items["categories"].to_list()]
        table = np.zeros((self.vocab_size("item"), max(1, max(map(len, rows), default=0))), dtype=np.int64)
        for item, row in zip(self.items["item"].to_list(), rows):
            table[item, : len(row)] = row
        return table

    def training_item_counts(self) -> np.ndarray:
        """Events per item id over the training part of every timeline (the last two held out)."""
        held_out = np.concatenate([self.offsets[1:] - 1, self.offsets[1:] - 2])
        train = np.ones(len(self.timestamps), dtype=bool)
        train[held_out] = False
        return np.bincount(self.features["item"][train], minlength=self.vocab_size("item"))

    def vocab_size(self, feature: str) -> int:
        """Size of a feature's id space, padding and unknown included."""
        return int(self.meta["vocab_sizes"][MULTI_VALUED.get(feature, feature)])

    @classmethod
    def load(cls, folder: Path) -> "Timelines":
        """Read a prepared folder (see `build`); fails clearly if it is missing or incomplete."""
        meta_path = folder / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{meta_path} not found: prepare the data first (`make data` or "
                "`python pipelines/prepare.py data=<name>`)"
            )
        meta = json.loads(meta_path.read_text())
        events = pl.read_parquet(folder / "events.parquet")
        users = pl.read_parquet(folder / "users.parquet")
        counts = users["n_events"].to_numpy().astype(np.int64)
        reviews_path = folder / "reviews.parquet"
        return cls(
            features={name: events[name].to_numpy() for name in FEATURES},
            timestamps=events["timestamp"].to_numpy(),
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            users=users.select("user", "user_id"),
            items=pl.read_parquet(folder / "items.parquet"),
            vocab=meta["vocab"],
            meta=meta,
            reviews=pl.read_parquet(reviews_path) if reviews_path.exists() else None,
            folder=folder,
        )


def build(source: SourceData, protocol: Protocol, issues: InputIssues) -> dict[str, pl.DataFrame | dict]:
    """Turn a reader's events and items into the artifact tables and the statistics for `meta.json`.

    Steps, in order: sort each user's events by time (stable on ties), drop exact duplicate events
    (the first in file order kept) and users left with fewer than `protocol.min_events` events, and
    map every feature to integer ids (0 padding, 1 unknown; items by descending frequency).

    User and item ids become integer codes first (their rank among the sorted ids), so that the
    steps over every event (sort, dedupe, filter) touch a few numeric columns: on the text columns
    they took most of the time and memory.

    `source.events` is consumed: its columns are moved out as they are used, so that the reader's
    copy of every event (480 MB for 20M MovieLens ratings) is freed once the events are sorted
    rather than held until the end. On these machines the first touch of memory is a good share of
    the time (benchmarks/README.md), so less memory is also less time.
    """
    events = source.events
    rows_in = events.height
    if rows_in == 0:
        raise ValueError(f"no events to build timelines from: the reader kept none (bad rows: {dict(issues.counts)})")
    with ThreadPoolExecutor(2) as pool:  # the two are independent, and neither keeps both cores busy alone
        ids = [events.drop_in_place("user_id"), events.drop_in_place("item_id")]
        (user_ids, user), (item_ids, item) = pool.map(_codes, ids)
        del ids
    reviews = ["review_title", "review_text"] if _has_reviews(events) else []  # carried only if present
    moved = [events.drop_in_place(name) for name in ["timestamp", "rating", SOURCE_LINE, *reviews]]
    frame = _in_time_order(pl.DataFrame([user.alias("user"), item.alias("item"), *moved]), len(user_ids))
    del user, item, moved
    frame, duplicates, short_counts = _protocol_filter(frame, protocol.min_events, len(user_ids))
    if frame.height == 0:
        raise ValueError(
            f"no events left after filtering: {rows_in} rows read, {duplicates} duplicates, "
            f"{np.count_nonzero(short_counts)} users with fewer than data.min_events={protocol.min_events} events"
        )

    items = _item_table(frame, source.items, item_ids)
    categories = _category_vocab(items)
    ratings = frame["rating"].unique().drop_nulls().sort()
    items = items.with_columns(category=_ids(pl.col("categories").list.first(), categories))
    encoded = _encode(frame, items, ratings, reviews)
    users = _user_table(frame, user_ids)
    tables: dict[str, pl.DataFrame | dict] = {
        "events": encoded.select("user", *FEATURES, "timestamp"),
        "users": users,
        "items": items.select("item", "item_id", "title", "categories", "category", "count"),
    }
    if reviews and _has_reviews(encoded):
        tables["reviews"] = encoded.select(reviews)

    stats = {
        "rows_in": rows_in,
        "users": users.height,
        "items": items.height,
        "events": encoded.height,
        "dropped": {
            **issues.summary()["counts"],
            "exact duplicate event": duplicates,
            f"user with fewer than {protocol.min_events} events": int(short_counts.sum()),
        },
        "dropped_users": int(np.count_nonzero(short_counts)),
        "bad_row_examples": issues.summary()["examples"],
        "vocab": {"rating": [_rating_label(r) for r in ratings.to_list()], "category": categories},
        "vocab_sizes": {
            "item": items.height + 2,
            "rating": len(ratings) + 2,
            "category": len(categories) + 2,
        },
    }
    tables["stats"] = stats
    return tables


def _codes(ids: pl.Series) -> tuple[pl.Series, pl.Series]:
    """The distinct ids as text in text order, and each event's rank among them (UInt32): integers
    that sort as the ids do.

    Ids are categoricals, or whole numbers (`NUMBER_ID_SCHEMA`), which rank by their decimal text
    as well, so that a dataset gets the same codes whichever way its reader typed the ids. The
    ranks are looked up by the categorical's physical code, or the number itself, in a table with
    one entry per code: casting 20M categoricals to an Enum of the ids took three times as long.
    Numbers too sparse for such a table are looked up by hash. `maintain_order=True` is not needed
    for the result, but polars' order-keeping unique is the faster one.
    """
    distinct = ids.unique(maintain_order=True)
    order = distinct.cast(pl.String).arg_sort()
    distinct = distinct.gather(order)
    text = distinct.cast(pl.String)
    physical = distinct.to_physical().to_numpy()
    largest = int(physical.max())
    if largest > 2 * len(ids) + 1024:  # e.g. a few ids in the billions
        return text, ids.replace_strict(distinct, pl.int_range(len(distinct), dtype=pl.UInt32, eager=True))
    rank = np.zeros(largest + 1, np.uint32)
    rank[physical] = np.arange(len(physical), dtype=np.uint32)
    return text, pl.Series(rank).gather(ids.to_physical())


def _in_time_order(frame: pl.DataFrame, num_users: int) -> pl.DataFrame:
    """The events by user code, each user's by time, ties in file order; `source_line` dropped.

    Readers leave the frame in line order (checked; sorted first otherwise), and `_time_order`
    keeps ties in frame order, so the line need not be a key. The user column is flagged as
    sorted, so that polars takes its fast paths for the runs that follow.
    """
    if not frame[SOURCE_LINE].is_sorted():
        frame = frame.sort(SOURCE_LINE)
    frame = frame.drop(SOURCE_LINE).rechunk()  # a gather from many chunks took three times as long
    return frame[_time_order(frame, num_users)].with_columns(pl.col("user").set_sorted())


def _time_order(frame: pl.DataFrame, num_users: int) -> pl.Series:
    """The row order that sorts `frame` by user code, each user's rows by time (stable).

    A group-by collects each user's rows (polars keeps them in frame order within a group), sorts
    each group by time on its own, and the groups are put in user order: a list of rows each, so
    that is a sort of one row per user. Against polars' stable sort by user and time, on 20M
    events: 0.6 against 1.2 s for a file holding each user's events together (every MovieLens
    release), 0.9 against 2.15 s for one in time order, 1.8 against 9.5 s for one in random
    order. In the first kind the group is the run of rows, which polars knows to be sorted and
    groups by slicing instead of hashing: 0.15 s less. In the second the groups are in time order
    already, and are not sorted again.
    """
    run = frame["user"].rle_id()  # flagged sorted by polars
    group = run if run.max() + 1 == num_users else frame["user"]  # one run of rows per user, or not
    rows = frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("row"), "user", "timestamp")
    in_time = pl.col("row") if frame["timestamp"].is_sorted() else pl.col("row").sort_by("timestamp", maintain_order=True)
    by_group = rows.with_columns(group.alias("group")).group_by("group").agg(pl.col("user").first(), in_time)
    return by_group.sort("user")["row"].explode()


def _ids(values: pl.Expr, vocab: pl.Series | list) -> pl.Expr:
    """Vocabulary ids: the i-th value of `vocab` is 2 + i, anything else (null included) UNKNOWN."""
    return values.replace_strict(vocab, list(range(2, len(vocab) + 2)), default=UNKNOWN, return_dtype=pl.Int32)


def _has_reviews(frame: pl.DataFrame) -> bool:
    """Whether any event has a review text or title (MovieLens has none; Amazon and Google do)."""
    return frame.select(pl.col("review_text").is_not_null().any() | pl.col("review_title").is_not_null().any()).item()


def _duplicates(frame: pl.DataFrame) -> np.ndarray:
    """Rows (indices) that repeat an earlier row's user, item, timestamp and rating, in a time-sorted frame.

    Exact duplicates sit next to each other in the sorted frame with the same timestamp, so only
    rows whose timestamp equals a neighbour's can be one: checking those few (the user too) is much
    cheaper than hashing every row, and comparing the timestamps alone to find them is cheaper than
    comparing the users as well. Ties are in file order, so the first copy in the frame is the
    first in the file.
    """
    same = pl.col("timestamp") == pl.col("timestamp").shift()
    tied = frame.select((same | same.shift(-1)).fill_null(False)).to_series()
    candidates = frame.with_row_index("_row").filter(tied)
    return candidates.filter(~pl.struct("user", "item", "timestamp", "rating").is_first_distinct())["_row"].to_numpy()


def _protocol_filter(frame: pl.DataFrame, min_events: int, num_users: int) -> tuple[pl.DataFrame, int, np.ndarray]:
    """The time-sorted events without exact duplicates and without users left under `min_events`.

    Returns the kept events, the number of duplicates, and per user code the events dropped for
    being too few (0 for a kept user). Both drops are one filter: each filter of the frame costs
    a fresh copy of every event.
    """
    user = frame["user"].to_numpy()
    repeats = _duplicates(frame)
    counts = np.diff(np.searchsorted(user, np.arange(num_users + 1, dtype=user.dtype)))  # user is sorted
    np.subtract.at(counts, user[repeats], 1)  # each user's events once the duplicates are gone
    short = counts < min_events
    keep = (~short)[user]  # one array of 20M flags, not two
    keep[repeats] = False
    return frame.filter(keep), len(repeats), np.where(short, counts, 0)


def _item_table(frame: pl.DataFrame, listed: pl.DataFrame, item_ids: pl.Series) -> pl.DataFrame:
    """One row per item with its code, title, categories and event count; ids by descending count.

    Codes are ranks among the sorted item ids, so ordering ties by code orders them by item id,
    and they index an array of counts: a tenth of the time of a group-by on 18M events. The counts
    are added in place (`np.add.at`): `np.bincount` first copies the codes to 64 bits, 146 MB of
    fresh memory that took 0.25 s to fault in. Title and categories come from the source's item
    table (`listed`); an item it lacks has none.
    """
    counts = np.zeros(len(item_ids), np.int64)
    np.add.at(counts, frame["item"].to_numpy(), 1)
    seen = np.flatnonzero(counts)
    items = (
        pl.DataFrame({"code": seen.astype(np.uint32), "count": counts[seen].astype(np.uint32)})
        .sort(["count", "code"], descending=[True, False])
        .with_row_index("item", offset=2)
    )
    items = items.with_columns(pl.col("item").cast(pl.Int32), item_ids.gather(items["code"]).alias("item_id"))
    return items.join(listed, on="item_id", how="left", maintain_order="left").with_columns(
        pl.col("categories").fill_null([])
    )


def _user_table(frame: pl.DataFrame, user_ids: pl.Series) -> pl.DataFrame:
    """user (index), user_id, n_events: one row per run of a user's events in the sorted frame."""
    runs = frame["user"].rle()
    return pl.DataFrame({
        "user": pl.int_range(runs.len(), dtype=pl.Int32, eager=True),
        "user_id": user_ids.gather(runs.struct.field("value")),
        "n_events": runs.struct.field("len").cast(pl.Int32),
    })


def _encode(frame: pl.DataFrame, items: pl.DataFrame, ratings: pl.Series, reviews: list[str]) -> pl.DataFrame:
    """Event features as vocabulary ids, looked up by item code (gathers, not joins on 20M rows)."""
    size = int(items["code"].max()) + 1
    item = pl.Series(np.zeros(size, np.int32)).scatter(items["code"], items["item"])
    category = pl.Series(np.full(size, UNKNOWN, np.int32)).scatter(items["code"], items["category"])
    return frame.select(
        pl.col("user").rle_id().cast(pl.Int32),
        pl.lit(item).gather(pl.col("item")).alias("item"),
        _ids(pl.col("rating"), ratings).alias("rating"),
        pl.lit(category).gather(pl.col("item")).alias("category"),
        "timestamp",
        *reviews,
    )


def _category_vocab(items: pl.DataFrame) -> list[str]:
    """Category names by descending number of events, then name: frequent ones get small ids."""
    exploded = items.select("categories", "count").explode("categories").drop_nulls("categories")
    totals = exploded.group_by("categories").agg(pl.col("count").sum())
    return totals.sort(["count", "categories"], descending=[True, False])["categories"].to_list()


def _rating_label(value: float) -> str:
    return f"{value:g}"


def prepare(
    source: SourceData,
    out_dir: Path,
    protocol: Protocol,
    issues: InputIssues,
    config_fingerprint: str,
    extra_meta: dict | None = None,
) -> Path:
    """Build the timelines and write them to `out_dir` atomically (temp folder, then rename)."""
    start = time.perf_counter()
    tables = build(source, protocol, issues)
    stats = tables.pop("stats")
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": config_fingerprint,
        "protocol": {"min_events": protocol.min_events, "split": "last event test, second to last validation"},
        **stats,
        **(extra_meta or {}),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    _remove_leftovers(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        for name, table in tables.items():
            table.write_parquet(tmp / f"{name}.parquet", **PARQUET_OPTIONS)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))  # last: no meta.json, no trust
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _remove_leftovers(out_dir: Path) -> None:
    """Temp and old folders of earlier runs that were killed before they could clean up."""
    if out_dir.parent.exists():
        for stale in out_dir.parent.glob(f".{out_dir.name}.*-*"):
            shutil.rmtree(stale, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap `new` into `target`'s place; the old folder is renamed away first, then removed."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def is_current(out_dir: Path, config_fingerprint: str) -> bool:
    """True if `out_dir` holds complete artifacts built from the same config and raw files."""
    meta_path = out_dir / META_FILE
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return False
    return meta.get("fingerprint") == config_fingerprint and meta.get("format_version") == FORMAT_VERSION
