"""The prepare stage as one call: fetch if needed, read, build timelines, write, or reuse.

Later stages call `prepare_dataset` too, so that a missing or stale artifact folder is (re)built on
demand and nobody has to remember to run `make data` first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from userllm.data.fetch import fetch
from userllm.data.issues import InputIssues
from userllm.data.sources import read_events
from userllm.data.timelines import Protocol, fingerprint, fingerprint_files, is_current, prepare

log = logging.getLogger(__name__)


@dataclass
class DatasetSpec:
    """Where a dataset's raw files are, how to read them and which protocol to apply."""

    name: str
    reader: str
    raw_dir: Path
    processed_dir: Path
    reader_options: dict = field(default_factory=dict)
    min_events: int = 5
    strict: bool = False
    max_bad_fraction: float = 0.05
    fetch: bool = True

    def fingerprint_config(self) -> dict:
        """The settings that change the artifacts (paths and the fetch switch do not)."""
        return {
            "reader": self.reader,
            "reader_options": dict(sorted(self.reader_options.items())),
            "min_events": self.min_events,
            "strict": self.strict,
            "max_bad_fraction": self.max_bad_fraction,
        }


def prepare_dataset(spec: DatasetSpec, force: bool = False) -> Path:
    """Make sure `spec.processed_dir` holds timelines built from the current config and raw files."""
    raw_dir = Path(spec.raw_dir)
    if spec.fetch and not _has_files(raw_dir):
        log.info("no raw files in %s: fetching %s", raw_dir, spec.name)
        fetch(spec.name, raw_dir, **spec.reader_options)
    if not _has_files(raw_dir):
        raise FileNotFoundError(
            f"no raw files in {raw_dir} for data={spec.name}: place the dataset's files there "
            "(see README, 'Other datasets') or set data.fetch=true to download them"
        )
    protocol = Protocol(min_events=spec.min_events)
    raw_files = fingerprint_files(raw_dir)
    digest = fingerprint(spec.fingerprint_config(), raw_files)
    out_dir = Path(spec.processed_dir)
    if not force and is_current(out_dir, digest):
        log.info("reusing prepared timelines in %s (fingerprint %s)", out_dir, digest)
        return out_dir

    start = time.perf_counter()
    log.info("reading %s with the %s reader", raw_dir, spec.reader)
    issues = InputIssues(strict=spec.strict, max_bad_fraction=spec.max_bad_fraction)
    source = read_events(spec.reader, raw_dir, issues, **spec.reader_options)
    log.info("building timelines (min_events=%d)", spec.min_events)
    prepare(
        source,
        out_dir,
        protocol,
        issues,
        digest,
        extra_meta={"dataset": spec.name, "config": spec.fingerprint_config(), "raw_files": raw_files},
    )
    issues.log_summary()
    log.info("wrote %s in %.1f s", out_dir, time.perf_counter() - start)
    return out_dir


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())
