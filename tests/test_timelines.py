"""Timelines: order, ties, duplicates, the protocol filter, vocabularies, the split, caching."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import product

import numpy as np
import polars as pl
import pytest

from userllm.data.issues import InputIssues
from userllm.data.timelines import UNKNOWN, Protocol, Timelines, fingerprint, is_current, prepare
from tests.conftest import make_source


def user_items(timelines, user_id: str) -> list[str]:
    """The item ids of one user's timeline, in stored order."""
    user = timelines.users.filter(timelines.users["user_id"] == user_id)["user"].item()
    ids = timelines.features["item"][timelines.offsets[user] : timelines.offsets[user + 1]]
    lookup = dict(zip(timelines.items["item"].to_list(), timelines.items["item_id"].to_list()))
    return [lookup[i] for i in ids]


def test_events_sorted_by_time_with_ties_in_file_order(build_timelines):
    rows = [("u", "c", 30, 4.0), ("u", "a", 10, 3.0), ("u", "b", 20, 5.0), ("u", "d", 20, 1.0)]
    timelines = build_timelines(rows)
    assert user_items(timelines, "u") == ["a", "b", "d", "c"]  # b and d tie at 20: file order
    assert np.all(np.diff(timelines.timestamps) >= 0)


def test_ties_keep_file_order_when_events_come_in_another_order(tmp_path):
    rows = [("u", "c", 30, 4.0), ("u", "a", 10, 3.0), ("u", "b", 20, 5.0), ("u", "d", 20, 1.0), ("v", "a", 5, 2.0),
            ("v", "e", 5, 2.0), ("v", "f", 6, 2.0)]
    source = make_source(rows)
    shuffled = replace(source, events=source.events.reverse())  # a reader need not keep the file's order
    prepare(shuffled, tmp_path / "out", Protocol(3), InputIssues(), "test")
    timelines = Timelines.load(tmp_path / "out")
    assert user_items(timelines, "u") == ["a", "b", "d", "c"] and user_items(timelines, "v") == ["a", "e", "f"]


def random_rows(seed: int) -> list[tuple]:
    """Events grouped by user, in numeric user order (not the text order of the codes), with many
    same-second ties and exact duplicates, some users too short for the protocol, and one long
    enough (300 events) that an unstable sort would reorder its ties."""
    rng = np.random.default_rng(seed)
    return [(user, int(rng.integers(30)), int(rng.integers(6)), float(rng.integers(1, 3)))
            for user in range(1, 40) for _ in range(300 if user == 7 else rng.integers(1, 14))]


def expected_timelines(rows: list[tuple], min_events: int) -> dict[str, list[tuple]]:
    """The protocol written plainly: duplicates go (the first in the file stays), short users go,
    users in the text order of their ids, each one's events by time with ties in file order."""
    unique = list(dict.fromkeys(rows))
    per_user = {str(u): [r for r in unique if r[0] == u] for u in dict.fromkeys(r[0] for r in rows)}
    return {user: [(str(item), time) for _, item, time, _ in sorted(events, key=lambda r: r[2])]
            for user, events in sorted(per_user.items()) if len(events) >= min_events}


def arranged(rows: list[tuple], order: str, seed: int) -> list[tuple]:
    """The events of `random_rows` as a file may hold them: grouped by user, in time order, or shuffled."""
    if order == "by time":
        return sorted(rows, key=lambda row: row[2])  # stable: each user's ties keep their order
    if order == "shuffled":
        return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    return rows


@pytest.mark.parametrize("order", ["grouped by user", "by time", "shuffled"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_timelines_follow_the_protocol_whatever_the_file_order(tmp_path, seed, order):
    """Each user's events in one run of rows (as MovieLens ships them) are grouped by run, any
    other order by user: both must give what the protocol says."""
    rows = arranged(random_rows(seed), order, seed)
    runs = 1 + sum(a[0] != b[0] for a, b in zip(rows, rows[1:]))
    assert (runs == 39) == (order == "grouped by user")
    prepare(make_source(rows), tmp_path / "out", Protocol(4), InputIssues(), "test")
    timelines = Timelines.load(tmp_path / "out")
    stored = {user_id: list(zip(user_items(timelines, user_id), timelines.timestamps[start:end] - 1_000_000_000))
              for user_id, start, end in zip(timelines.users["user_id"], timelines.offsets, timelines.offsets[1:])}
    assert list(stored.items()) == list(expected_timelines(rows, 4).items())


@pytest.mark.parametrize("ids", [[9, 10, 100], [9, 10, 4_000_000_000]])  # a table of ranks; too sparse for one
def test_whole_number_ids_get_the_codes_of_their_text(tmp_path, ids):
    rows = [(user, item, time, 4.0) for time, (user, item) in enumerate(product(ids, ids))]
    text = make_source(rows)
    as_numbers = pl.col("user_id", "item_id").cast(pl.String).cast(pl.UInt32)
    numbers = replace(text, events=text.events.with_columns(as_numbers))
    prepare(text, tmp_path / "text", Protocol(3), InputIssues(), "test")
    prepare(numbers, tmp_path / "numbers", Protocol(3), InputIssues(), "test")
    for table in ("events", "users", "items"):
        assert pl.read_parquet(tmp_path / f"numbers/{table}.parquet").equals(
            pl.read_parquet(tmp_path / f"text/{table}.parquet"))
    assert pl.read_parquet(tmp_path / "numbers/users.parquet")["user_id"].to_list() == sorted(map(str, ids))


def test_exact_duplicates_removed_and_counted(build_timelines):
    rows = [("u", "a", 1, 3.0), ("u", "b", 2, 3.0), ("u", "a", 1, 3.0), ("u", "a", 1, 5.0), ("u", "c", 3, 1.0)]
    timelines = build_timelines(rows)
    assert user_items(timelines, "u") == ["a", "a", "b", "c"]  # same item, other rating: kept
    assert timelines.meta["dropped"]["exact duplicate event"] == 1


def test_min_events_filter_drops_short_users(build_timelines):
    rows = [("long", i, i, 4.0) for i in range(5)] + [("short", 9, 1, 2.0), ("short", 8, 2, 2.0)]
    timelines = build_timelines(rows, min_events=3)
    assert timelines.users["user_id"].to_list() == ["long"]
    assert timelines.meta["dropped"]["user with fewer than 3 events"] == 2
    assert timelines.meta["dropped_users"] == 1
    assert timelines.meta["users"] == 1 and timelines.meta["events"] == 5


def test_same_event_of_two_users_is_no_duplicate(build_timelines):
    rows = [("u", "a", 1, 3.0), ("u", "b", 2, 3.0), ("u", "c", 3, 3.0), ("v", "c", 3, 3.0), ("v", "d", 4, 3.0),
            ("v", "e", 5, 3.0)]  # u's last and v's first event are neighbours once sorted, equal but the user
    timelines = build_timelines(rows)
    assert timelines.meta["dropped"]["exact duplicate event"] == 0 and timelines.meta["events"] == 6


def test_user_short_once_duplicates_go_is_dropped(build_timelines):
    rows = [("long", i, i, 4.0) for i in range(3)] + [("dup", "a", 1, 2.0), ("dup", "a", 1, 2.0), ("dup", "b", 2, 2.0)]
    timelines = build_timelines(rows, min_events=3)
    assert timelines.users["user_id"].to_list() == ["long"]
    assert timelines.meta["dropped"]["exact duplicate event"] == 1
    assert timelines.meta["dropped"]["user with fewer than 3 events"] == 2  # counted after the duplicate went
    assert timelines.meta["dropped_users"] == 1 and timelines.meta["events"] == 3


def test_no_events_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no events to build timelines from"):
        prepare(make_source([]), tmp_path / "out", Protocol(3), InputIssues(), "test")
    assert not (tmp_path / "out").exists()


def test_protocol_rejects_too_few_events():
    with pytest.raises(ValueError, match="min_events"):
        Protocol(min_events=2)


def test_vocabularies_reserve_padding_and_unknown(build_timelines):
    rows = [
        ("u", "pop", 1, 4.0, ["Comedy"]),
        ("v", "pop", 1, None, ["Comedy"]),
        ("u", "rare", 2, 2.0, []),
        ("u", "x", 3, 4.0, ["Drama", "Comedy"]),
        ("v", "y", 2, 5.0, ["Drama"]),
        ("v", "z", 3, 5.0, ["Drama"]),
    ]
    timelines = build_timelines(rows)
    items = dict(zip(timelines.items["item_id"], timelines.items["item"]))
    assert items["pop"] == 2  # most frequent item gets the first real id
    assert timelines.vocab["rating"] == ["2", "4", "5"]
    assert timelines.vocab_size("rating") == 5 and timelines.vocab_size("item") == 7
    assert set(timelines.vocab["category"]) == {"Comedy", "Drama"}
    assert UNKNOWN in timelines.features["rating"]  # the null rating
    rare = timelines.items.filter(timelines.items["item_id"] == "rare")
    assert rare["category"].item() == UNKNOWN  # no categories


def test_prepare_is_atomic_and_fingerprinted(tmp_path):
    out = tmp_path / "processed" / "ds"
    prepare(make_source([("u", i, i, 1.0) for i in range(4)]), out, Protocol(3), InputIssues(), "abc")
    assert is_current(out, "abc") and not is_current(out, "other")
    assert not list(out.parent.glob(".ds*")), "no temp folder left behind"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["fingerprint"] == "abc" and meta["events"] == 4


def test_fingerprint_changes_with_config_and_files(tmp_path):
    raw = {"a.csv": {"bytes": 1, "mtime_ns": 1}}
    assert fingerprint({"min_events": 3}, raw) == fingerprint({"min_events": 3}, raw)
    assert fingerprint({"min_events": 3}, raw) != fingerprint({"min_events": 4}, raw)
    assert fingerprint({"min_events": 3}, raw) != fingerprint({"min_events": 3}, {"a.csv": {"bytes": 2, "mtime_ns": 1}})


def test_training_item_counts_hold_out_last_two(build_timelines):
    timelines = build_timelines([("u", "a", 1, 1.0), ("u", "a", 2, 2.0), ("u", "b", 3, 1.0), ("u", "c", 4, 1.0)])
    counts = timelines.training_item_counts()
    items = dict(zip(timelines.items["item_id"], timelines.items["item"]))
    assert counts[items["a"]] == 2 and counts[items["b"]] == 0 and counts[items["c"]] == 0
