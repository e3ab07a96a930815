"""The prepare stage as users run it: `python pipelines/prepare.py data=<name> data.raw_dir=<dir>`.

Raw fixtures are written in the publishers' exact formats. Most runs go through the real entry
point in this process (`run_prepare`): Hydra parses the same command line and prints the same error
report a user sees, without paying the Lightning import of a fresh interpreter (about 5 s) per run.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO, run_pipeline
from userllm.data import timelines
from userllm.data.collate import EncoderCollator
from userllm.data.datamodule import TimelineDataModule
from userllm.data.prepare import DatasetSpec, prepare_dataset

SCRIPT = REPO / "pipelines" / "prepare.py"
T0 = 978_300_760  # a MovieLens-1M era time, in seconds
GENRES = ["Animation|Children's|Comedy", "Adventure|Fantasy", "Comedy|Romance", "Drama", "Action|Thriller"]
MOVIES_1M = [f"{i}::Movie {i} ({1990 + i})::{GENRES[i % len(GENRES)]}" for i in range(1, 10)] + [
    "10::Et Dieu... créa la femme (1956)::Drama"  # latin-1, as GroupLens ships it
]


# --- fixtures in the publishers' formats ----------------------------------------------------------

def ratings_1m(users: range, per_user: int) -> list[str]:
    """`UserID::MovieID::Rating::Timestamp` lines: every user rates the 10 movies in turn."""
    return [f"{u}::{k % 10 + 1}::{k % 5 + 1}::{T0 + 60 * k + u}" for u in users for k in range(per_user)]


def write_ml1m(raw_dir: Path, ratings: list[str]) -> Path:
    """ratings.dat and movies.dat as GroupLens publishes ml-1m (`::` separated, latin-1 titles)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "movies.dat").write_bytes(("\n".join(MOVIES_1M) + "\n").encode("latin-1"))
    (raw_dir / "ratings.dat").write_text("\n".join(ratings) + "\n")
    return raw_dir


def standard_ratings() -> list[str]:
    """4 users x 20 ratings, one exact duplicate, and user 5 with 3 ratings (under min_events=5)."""
    lines = ratings_1m(range(1, 5), 20)
    return [*lines[:10], lines[3], *lines[10:], *ratings_1m(range(5, 6), 3)]


def with_bad_rows(lines: list[str], bad: dict[int, str]) -> list[str]:
    """`lines` with `bad[n]` placed so that it is physical line n of the file."""
    out = list(lines)
    for number in sorted(bad):
        out.insert(number - 1, bad[number])
    return out


BAD_ROWS = {  # line -> row, one per kind of damage
    3: "1::1::5",  # wrong number of fields
    7: f"1::2::great::{T0}",  # rating not a number
    11: f"1::999::4::{T0}",  # item not in movies.dat
}


def write_amazon_2018(raw_dir: Path) -> Path:
    """`Movies_and_TV.json.gz` reviews + `meta_Movies_and_TV.json.gz`, McAuley-lab fields."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    meta = [{"asin": f"B{i:04d}", "title": f"Film {i}", "category": ["Movies & TV", GENRES[i % 5].split("|")[0]],
             "main_cat": "Movies & TV", "also_buy": []} for i in range(6)]
    reviews = [
        {"overall": float(k % 5 + 1), "verified": True, "reviewTime": "11 9, 2012", "reviewerID": f"A{u}",
         "asin": f"B{(u + k) % 6:04d}", "reviewerName": "Terri", "reviewText": f"text {u} {k}",
         "summary": f"summary {u} {k}", "unixReviewTime": T0 + 86_400 * k}
        for u in range(3) for k in range(5)
    ]
    for name, rows in (("meta_Movies_and_TV.json.gz", meta), ("Movies_and_TV.json.gz", reviews)):
        (raw_dir / name).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return raw_dir


def run_prepare(*overrides: str) -> tuple[int, str]:
    """Run `pipelines/prepare.py` as a user would, in a subprocess: its exit code and printed output.

    (In-process runs let Hydra reconfigure logging onto pytest's captured streams, which later
    closes them under the rest of the suite.)
    """
    env = {**os.environ, "USERLLM_ROOT": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def prepare_cli(tmp_path):
    """`prepare(data, *overrides)` with raw files in tmp/raw and everything written under tmp."""

    def prepare(data: str, *overrides: str) -> tuple[int, str]:
        return run_prepare(
            f"data={data}", f"data.raw_dir={tmp_path / 'raw'}",
            f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'outputs'}", *overrides,
        )

    return prepare


def processed(tmp_path: Path, name: str = "movielens_1m") -> Path:
    return tmp_path / "data" / "processed" / name


def read_meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


# --- artifacts --------------------------------------------------------------------------------------

def test_movielens_1m_artifacts_and_meta(tmp_path, prepare_cli):
    write_ml1m(tmp_path / "raw", standard_ratings())
    code, output = prepare_cli("movielens_1m", "data.min_events=5")
    assert code == 0, output
    out = processed(tmp_path)
    assert {p.name for p in out.iterdir()} == {"events.parquet", "users.parquet", "items.parquet", "meta.json"}
    meta = read_meta(out)
    assert (meta["users"], meta["items"], meta["events"], meta["rows_in"]) == (4, 10, 80, 84)
    assert meta["dropped"] == {"exact duplicate event": 1, "user with fewer than 5 events": 3}
    assert meta["dropped_users"] == 1
    assert meta["vocab_sizes"] == {"item": 12, "rating": 7, "category": 2 + 9}
    assert meta["protocol"]["min_events"] == 5
    assert meta["config"] == {"reader": "movielens_1m", "reader_options": {}, "min_events": 5, "strict": False,
                              "max_bad_fraction": 0.05}
    assert set(meta["raw_files"]) == {"movies.dat", "ratings.dat"}
    assert meta["raw_files"]["ratings.dat"]["bytes"] == (tmp_path / "raw" / "ratings.dat").stat().st_size
    assert len(meta["fingerprint"]) == 16
    assert pl.read_parquet(out / "events.parquet").height == 80
    titles = pl.read_parquet(out / "items.parquet")["title"].to_list()
    assert "Et Dieu... créa la femme (1956)" in titles
    assert "movielens_1m: 4 users, 10 items, 80 events" in output


def test_amazon_2018_gzipped_json_lines(tmp_path, prepare_cli):
    write_amazon_2018(tmp_path / "raw")
    code, output = prepare_cli("amazon_2018", "data.min_events=3")
    assert code == 0, output
    out = processed(tmp_path, "amazon_2018")
    meta = read_meta(out)
    assert (meta["users"], meta["items"], meta["events"]) == (3, 6, 15)
    assert meta["config"]["reader_options"] == {"category": "Movies_and_TV"}
    assert set(meta["raw_files"]) == {"Movies_and_TV.json.gz", "meta_Movies_and_TV.json.gz"}
    assert "Movies & TV" not in meta["vocab"]["category"]  # the root of every path is dropped
    reviews = pl.read_parquet(out / "reviews.parquet")
    assert reviews.height == 15 and reviews["review_text"].null_count() == 0


# --- cache: reuse, rebuild ------------------------------------------------------------------------

def test_second_run_reuses_without_rewriting(tmp_path, prepare_cli):
    write_ml1m(tmp_path / "raw", standard_ratings())
    assert prepare_cli("movielens_1m", "data.min_events=5")[0] == 0
    events = processed(tmp_path) / "events.parquet"
    written = events.stat().st_mtime_ns
    code, output = prepare_cli("movielens_1m", "data.min_events=5")
    assert code == 0 and "reusing prepared timelines" in output
    assert events.stat().st_mtime_ns == written


def test_changed_config_key_rebuilds(tmp_path, prepare_cli):
    write_ml1m(tmp_path / "raw", standard_ratings())
    prepare_cli("movielens_1m", "data.min_events=5")
    before = read_meta(processed(tmp_path))
    code, output = prepare_cli("movielens_1m", "data.min_events=3")
    assert code == 0 and "reusing" not in output
    after = read_meta(processed(tmp_path))
    assert after["fingerprint"] != before["fingerprint"]
    assert (after["protocol"]["min_events"], after["users"], after["events"]) == (3, 5, 83)


@pytest.mark.parametrize("change", ["touch", "append"])
def test_changed_raw_file_rebuilds(tmp_path, prepare_cli, change):
    raw = write_ml1m(tmp_path / "raw", standard_ratings())
    prepare_cli("movielens_1m", "data.min_events=5")
    ratings = raw / "ratings.dat"
    if change == "touch":
        stat = ratings.stat()
        os.utime(ratings, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    else:
        with ratings.open("a") as handle:
            handle.write("\n".join(ratings_1m(range(6, 7), 5)) + "\n")
    code, output = prepare_cli("movielens_1m", "data.min_events=5")
    assert code == 0 and "reusing" not in output
    assert read_meta(processed(tmp_path))["users"] == (4 if change == "touch" else 5)


# --- bad input ------------------------------------------------------------------------------------

def test_tolerant_mode_skips_and_counts_bad_rows(tmp_path, prepare_cli):
    raw = write_ml1m(tmp_path / "raw", with_bad_rows(standard_ratings(), BAD_ROWS))
    code, output = prepare_cli("movielens_1m", "data.min_events=5")
    assert code == 0, output
    meta = read_meta(processed(tmp_path))
    ratings = raw / "ratings.dat"
    assert meta["dropped"]["wrong number of fields"] == 1
    assert meta["dropped"]["rating not a number"] == 1
    assert meta["dropped"]["item not in meta file"] == 1
    assert meta["bad_row_examples"] == {
        "wrong number of fields": [f"{ratings}:3"],
        "rating not a number": [f"{ratings}:7"],
        "item not in meta file": [f"{ratings}:11"],
    }
    assert (meta["users"], meta["events"]) == (4, 80)
    assert f"skipped 1 rows: wrong number of fields (e.g. {ratings}:3)" in output


def test_strict_mode_fails_naming_file_and_line(tmp_path, prepare_cli):
    raw = write_ml1m(tmp_path / "raw", with_bad_rows(standard_ratings(), BAD_ROWS))
    code, output = prepare_cli("movielens_1m", "data.min_events=5", "data.strict=true")
    assert code == 1
    assert f"{raw / 'ratings.dat'}:3: wrong number of fields (expected 4 fields separated by '::')" in output
    assert not processed(tmp_path).exists()


@pytest.mark.parametrize("strict", ["false", "true"])
def test_too_many_bad_rows_fail_in_either_mode(tmp_path, prepare_cli, strict):
    bad = {line: f"1::1::oops::{T0}" for line in range(2, 12)}  # 10 of 94 rows, over the 5% default
    raw = write_ml1m(tmp_path / "raw", with_bad_rows(standard_ratings(), bad))
    code, output = prepare_cli("movielens_1m", "data.min_events=5", f"data.strict={strict}")
    assert code == 1
    if strict == "false":
        assert f"{raw / 'ratings.dat'}: 10 of 94 rows are bad" in output
        assert "more than the allowed 5.0% (data.max_bad_fraction)" in output
    else:
        assert f"{raw / 'ratings.dat'}:2: rating not a number" in output
    assert not processed(tmp_path).exists()
    assert prepare_cli("movielens_1m", "data.min_events=5", "data.max_bad_fraction=0.2")[0] == 0


# --- configuration errors fail at start -------------------------------------------------------------

def test_unknown_config_key_fails_naming_it(tmp_path, prepare_cli):
    write_ml1m(tmp_path / "raw", standard_ratings())
    code, output = prepare_cli("movielens_1m", "data.nonsense=1")
    assert code == 1
    assert "Could not override 'data.nonsense'" in output and "Key 'nonsense' is not in struct" in output
    assert not (tmp_path / "data").exists()


def test_unknown_reader_fails_naming_the_known_ones(tmp_path, prepare_cli):
    write_ml1m(tmp_path / "raw", standard_ratings())
    code, output = prepare_cli("movielens_1m", "data.reader=netflix")
    assert code == 1
    assert "unknown source format 'netflix' (expected one of: movielens_100k, movielens_1m" in output
    assert not processed(tmp_path).exists()


def test_missing_raw_folder_without_fetch_names_the_folder(tmp_path, prepare_cli):
    code, output = prepare_cli("movielens_1m", "data.fetch=false")
    assert code == 1
    assert f"no raw files in {tmp_path / 'raw'} for data=movielens_1m" in output


def test_entry_point_exits_nonzero_in_a_real_process(tmp_path):
    """One run in a fresh interpreter: the exit status and stderr a shell script would see."""
    with pytest.raises(AssertionError, match=r"prepare failed \(1\)[\s\S]*no raw files in"):
        run_pipeline("prepare", "data=movielens_1m", f"data.raw_dir={tmp_path / 'raw'}", "data.fetch=false",
                      f"paths.data_dir={tmp_path}", f"paths.output_dir={tmp_path / 'outputs'}")


# --- a killed prepare -----------------------------------------------------------------------------

def spec(tmp_path: Path, min_events: int = 5) -> DatasetSpec:
    return DatasetSpec(name="movielens_1m", reader="movielens_1m", raw_dir=tmp_path / "raw",
                       processed_dir=processed(tmp_path), min_events=min_events, fetch=False)


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in processed(tmp_path).parent.iterdir() if p.name.startswith("."))


def test_kill_while_writing_tables_leaves_nothing_to_trust(tmp_path, monkeypatch, caplog):
    write_ml1m(tmp_path / "raw", standard_ratings())
    write_parquet = pl.DataFrame.write_parquet
    calls = []

    def dies_on_second_table(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("simulated kill")
        return write_parquet(self, path, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", dies_on_second_table)
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_dataset(spec(tmp_path))
    monkeypatch.setattr(pl.DataFrame, "write_parquet", write_parquet)
    assert not processed(tmp_path).exists()
    assert leftovers(tmp_path) == [], "an exception cleans up its temp folder"
    # A SIGKILL gives no chance to clean up: a half-written folder of another pid stays behind.
    stale = processed(tmp_path).parent / ".movielens_1m.tmp-999999"
    stale.mkdir()
    (stale / "events.parquet").write_bytes(b"half")

    with caplog.at_level(logging.INFO):
        prepare_dataset(spec(tmp_path))
    assert "building timelines" in caplog.text
    assert read_meta(processed(tmp_path))["events"] == 80
    assert leftovers(tmp_path) == [], "the next run removes what killed runs left"


def test_kill_while_swapping_folders_rebuilds(tmp_path, monkeypatch, caplog):
    """Killed between moving the old folder away and moving the new one in."""
    write_ml1m(tmp_path / "raw", standard_ratings())
    prepare_dataset(spec(tmp_path))

    def dies_halfway(new: Path, target: Path) -> None:
        os.replace(target, target.with_name(f".{target.name}.old-{os.getpid()}"))
        raise RuntimeError("simulated kill")

    monkeypatch.setattr(timelines, "_replace_dir", dies_halfway)
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_dataset(spec(tmp_path, min_events=3))
    monkeypatch.undo()
    assert not processed(tmp_path).exists()

    with caplog.at_level(logging.INFO):
        prepare_dataset(spec(tmp_path, min_events=3))
    assert "reusing" not in caplog.text
    assert read_meta(processed(tmp_path))["protocol"]["min_events"] == 3


# --- history windows ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def long_timelines(tmp_path_factory) -> Path:
    """3 users with 210 events each: enough for full windows of 200 in every split."""
    tmp_path = tmp_path_factory.mktemp("long")
    write_ml1m(tmp_path / "raw", ratings_1m(range(1, 4), 210))
    return prepare_dataset(spec(tmp_path))


@pytest.mark.parametrize("history_len", [50, 100, 200])
def test_history_len_sets_the_batch_width(long_timelines, history_len):
    datamodule = TimelineDataModule(long_timelines, EncoderCollator, history_len=history_len, batch_size=8)
    datamodule.setup()
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader()):
        batch = next(iter(loader))
        assert batch["features"]["item"].shape[1] == history_len
        assert batch["mask"].sum(1).max() == history_len


# --- the real MovieLens-100K ------------------------------------------------------------------------

def test_make_data_on_movielens_100k(ml100k_processed):
    meta = read_meta(ml100k_processed)
    assert (meta["users"], meta["items"], meta["events"], meta["rows_in"]) == (943, 1682, 100_000, 100_000)
    assert meta["dropped"] == {"exact duplicate event": 0, "user with fewer than 5 events": 0}
    assert meta["vocab_sizes"] == {"item": 1684, "rating": 7, "category": 20}
    assert set(meta["raw_files"]) >= {"ml-100k.inter", "ml-100k.item"}
