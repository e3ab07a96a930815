"""Bookkeeping for bad input rows: strict mode fails on the first, tolerant mode counts and skips.

Every reader and the timeline builder report problems through one `InputIssues` object, so that
`meta.json` and the log show one summary of what was dropped and why, with file:line examples.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class BadInputError(ValueError):
    """Raised for input that cannot be used: names the file, line or key and what was expected."""


@dataclass
class InputIssues:
    """Counts bad rows per reason and keeps the first few `file:line` examples of each.

    strict: raise `BadInputError` on the first bad row instead of skipping it.
    max_bad_fraction: a file whose share of bad rows exceeds this fails in either mode.
    """

    strict: bool = False
    max_bad_fraction: float = 0.05
    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def report(self, reason: str, path: Path | str, lines: list[int] | int, total: int | None = None,
               expected: str = "") -> None:
        """Record `lines` of `path` (1-based) as bad for `reason`; in strict mode raise at once.

        `total` is how many lines were involved, when `lines` holds only a sample of them.
        """
        lines = [lines] if isinstance(lines, int) else list(lines)
        count = len(lines) if total is None else total
        if count == 0:
            return
        where = f"{path}:{lines[0]}" if lines else str(path)
        if self.strict:
            detail = f" (expected {expected})" if expected else ""
            raise BadInputError(f"{where}: {reason}{detail}")
        self.counts[reason] += count
        kept = self.examples.setdefault(reason, [])
        kept.extend(f"{path}:{line}" for line in lines[: self.max_examples - len(kept)])

    def check_share(self, path: Path | str, bad: int, total: int) -> None:
        """Fail if more than `max_bad_fraction` of a file's `total` rows were bad."""
        if total and bad / total > self.max_bad_fraction:
            raise BadInputError(
                f"{path}: {bad} of {total} rows are bad ({bad / total:.1%}), more than the allowed "
                f"{self.max_bad_fraction:.1%} (data.max_bad_fraction); first examples: "
                + ", ".join(e for examples in self.examples.values() for e in examples[:3])
            )

    def summary(self) -> dict:
        """The counts and examples as plain data for meta.json."""
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    def log_summary(self) -> None:
        for reason, count in self.counts.most_common():
            log.warning("skipped %d rows: %s (e.g. %s)", count, reason, ", ".join(self.examples[reason]))
