"""Tabulate a multirun: one row per job, what the sweep varied and the chosen metrics.

    python pipelines/collect.py <multirun dir> [--metrics 'test/accuracy,test/recall@*']

writes `summary.md` and `summary.csv` into the multirun folder. It runs by itself at the end of
every multirun (`hydra.callbacks.summary` in conf/hydra/default.yaml); run it by hand on a sweep
that stopped half way: jobs without a metrics.json get empty cells.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from userllm.io import atomic_write_text
from userllm.tables import csv_text, markdown_table

# The headline metric of each stage and task, and its trivial baseline; `test/*` shows everything.
DEFAULT_METRICS = ("test/recall@10", "test/ndcg@10", "test/accuracy", "test/rouge_lsum",
                   "test/pop_recall@10", "test/majority_accuracy")

log = logging.getLogger("userllm")


def job_folders(sweep_dir: Path) -> dict[int, Path]:
    """The job folders of a multirun (those with Hydra's `.hydra/`) by job number, in job order."""
    folders = {job_number(p.parent.parent): p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")}
    return dict(sorted(folders.items()))


def job_number(folder: Path) -> int:
    """The job's index in its sweep, as Hydra recorded it (folder names may be reformatted)."""
    return int(OmegaConf.load(folder / ".hydra" / "hydra.yaml").hydra.job.num)


def job_overrides(folder: Path) -> dict[str, str]:
    """The job's command-line overrides as key -> value (`+`/`~` prefixes stay in the key)."""
    pairs = (line.partition("=") for line in OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
    return {key: value for key, _, value in pairs}


def job_metrics(folder: Path) -> dict[str, Any]:
    """The job's final metrics.json, or nothing for a job that failed or has not finished."""
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def varying_keys(overrides: Sequence[dict[str, str]]) -> list[str]:
    """Override keys whose value differs between jobs: what the sweep varied. The rest is common
    to all jobs and would only repeat itself in every row."""
    keys = sorted({key for job in overrides for key in job})
    return [key for key in keys if len({job.get(key) for job in overrides}) > 1]


def metric_columns(metrics: Sequence[dict[str, Any]], patterns: Sequence[str]) -> list[str]:
    """Metric names that match a pattern (exact name or glob), in pattern order, then by name."""
    names = sorted({name for job in metrics for name in job}, key=natural_order)
    columns: list[str] = []
    for pattern in patterns:
        columns += [n for n in names if fnmatch.fnmatchcase(n, pattern) and n not in columns]
    return columns


def natural_order(name: str) -> list[Any]:
    """Sort key that puts recall@5 before recall@10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def summary_rows(sweep_dir: Path, patterns: Sequence[str]) -> list[dict[str, Any]]:
    """One row per job: its number, the varied overrides, the chosen metrics, and its folder."""
    folders = job_folders(sweep_dir)
    overrides = [job_overrides(f) for f in folders.values()]
    metrics = [job_metrics(f) for f in folders.values()]
    keys, columns = varying_keys(overrides), metric_columns(metrics, patterns)
    unfinished = [f.name for f, m in zip(folders.values(), metrics) if not m]
    if unfinished:
        log.warning("%d of %d jobs have no metrics.json: %s", len(unfinished), len(folders), ", ".join(unfinished))
    return [
        {"job": number, **{k: o.get(k, "") for k in keys}, **{c: m.get(c, "") for c in columns}, "folder": f.name}
        for (number, f), o, m in zip(folders.items(), overrides, metrics)
    ]


def write_summary(sweep_dir: Path, patterns: Sequence[str] = DEFAULT_METRICS) -> Path:
    """Write `summary.md` and `summary.csv` into the multirun folder; return the markdown file."""
    rows = summary_rows(sweep_dir, patterns)
    atomic_write_text(sweep_dir / "summary.csv", csv_text(rows))
    markdown = atomic_write_text(sweep_dir / "summary.md", f"# {sweep_dir}\n\n" + markdown_table(rows, empty="no jobs found"))
    log.info("summary of %d jobs written to %s and summary.csv", len(rows), markdown)
    return markdown


class WriteSummary(Callback):
    """Hydra callback: the summary of a multirun, once its last job has finished."""

    def __init__(self, metrics: Sequence[str] | None = None) -> None:
        self.metrics = list(metrics or DEFAULT_METRICS)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(Path(config.hydra.sweep.dir), self.metrics)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Tabulate a Hydra multirun's jobs and their metrics.")
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (holds one folder per job)")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                        help="comma-separated metric names or glob patterns (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(write_summary(args.sweep_dir, args.metrics.split(",")).read_text())


if __name__ == "__main__":
    main()
