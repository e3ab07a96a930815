"""The scripts under benchmarks/ still run: tiny sizes, numbers not judged (timing is not a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *arguments: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *arguments],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def test_prepare_bench_runs_both_implementations_on_the_same_data(tmp_path):
    run_script("prepare_bench.py", "--rows", "20000", "--min-events", "5", "--results-dir", str(tmp_path))
    report = json.loads((tmp_path / "prepare_bench.json").read_text())
    results = report["results"]
    assert set(results) == {"project (polars)", "pandas"}
    kept = {label: (r["events"], r["users"], r["items"]) for label, r in results.items()}
    assert len(set(kept.values())) == 1 and kept["pandas"][0] > 0  # the script checks this too
    assert report["context"]["shape"]["rows"] == 20000
    generated = {p.name for p in tmp_path.glob("ml20m_synth_20000r_*/*.csv")}  # the shape names the folder
    assert generated == {"movies.csv", "ratings.csv"}
    table = (tmp_path / "prepare_bench.md").read_text()
    assert "| pandas / project (polars) |" in table
    assert not list(tmp_path.glob(".prepare-*"))  # each run's output folder is removed


def test_prepare_bench_writes_the_same_ratings_in_time_order(tmp_path):
    for order in ("user", "time"):
        run_script("prepare_bench.py", "--rows", "20000", "--min-events", "5", "--skip-pandas", "--order", order,
                   "--results-dir", str(tmp_path))
    by_user, by_time = (pl.read_csv(next(tmp_path.glob(f"ml20m_synth_20000r_*{suffix}/ratings.csv")))
                        for suffix in ("s0", "s0_by_time"))
    assert not by_user["timestamp"].is_sorted() and by_time["timestamp"].is_sorted()
    assert by_time.equals(by_user.sort("timestamp", maintain_order=True))  # the same rows, each user's ties in order
    assert json.loads((tmp_path / "prepare_bench.json").read_text())["context"]["shape"]["order"] == "time"


def test_fresh_memory_prints_every_round_against_the_last():
    lines = run_script("fresh_memory.py", "--mib", "8", "--rounds", "3").splitlines()
    assert [line.split(":")[0] for line in lines] == ["round 1", "round 2", "round 3"]
    assert lines[-1].endswith("1.0x the last round")
