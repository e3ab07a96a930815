"""Shared fixtures: tiny canonical event tables, and the real MovieLens-100K prepared once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from userllm.data.issues import InputIssues
from userllm.data.schema import ITEM_SCHEMA, SourceData, to_canonical
from userllm.data.timelines import Protocol, Timelines, prepare

REPO = Path(__file__).resolve().parents[1]


def run_pipeline(stage: str, *overrides: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run `pipelines/<stage>.py` with Hydra overrides in a subprocess, as a user would."""
    env = {**os.environ, "USERLLM_ROOT": str(REPO), "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / f"{stage}.py"), *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"{stage} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def make_source(rows: list[tuple]) -> SourceData:
    """A reader's output from (user, item, timestamp, rating[, categories]) tuples, in file order.

    Items are titled "Movie <item>" and take the categories of their first row (default Drama).
    """
    events = pl.DataFrame(
        {
            "user_id": [str(r[0]) for r in rows],
            "item_id": [str(r[1]) for r in rows],
            "timestamp": [int(r[2]) + 1_000_000_000 for r in rows],
            "rating": [r[3] for r in rows],
            "source_line": list(range(1, len(rows) + 1)),
        },
        schema_overrides={"rating": pl.Float32},
    )
    items = pl.DataFrame({
        "item_id": [str(r[1]) for r in rows],
        "title": [f"Movie {r[1]}" for r in rows],
        "categories": [list(r[4]) if len(r) > 4 else ["Drama"] for r in rows],
    }).unique(subset="item_id", keep="first", maintain_order=True)
    return SourceData(to_canonical(events.lazy()).collect(), to_canonical(items.lazy(), ITEM_SCHEMA).collect())


@pytest.fixture
def build_timelines(tmp_path):
    """Prepare `rows` (see make_source) into a temp folder and load them back."""

    def build(rows: list[tuple], min_events: int = 3) -> Timelines:
        out = tmp_path / "processed"
        prepare(make_source(rows), out, Protocol(min_events), InputIssues(), "test")
        return Timelines.load(out)

    return build


@pytest.fixture(scope="session")
def ml100k_processed() -> Path:
    """The real MovieLens-100K prepared by the prepare stage with its defaults (fetched once)."""
    run_pipeline("prepare", "data=movielens_100k")
    return REPO / "data" / "processed" / "movielens_100k"
