"""One reader per raw format family, each ending in the canonical tables (`schema.py`).

A dataset's quirks live only here: everything downstream sees the events `user_id, item_id,
timestamp, rating, review_title, review_text, source_line` and the items `item_id, title,
categories`. Readers return both as a `SourceData`, report bad rows to the `InputIssues` they are
given, and raise `BadInputError` for files they cannot use.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from userllm.data.issues import BadInputError, InputIssues
from userllm.data.schema import SourceData
from userllm.data.sources.amazon import read_amazon_2018, read_amazon_2023
from userllm.data.sources.google_local import read_google_local
from userllm.data.sources.movielens import read_movielens_1m, read_movielens_100k, read_movielens_csv
from userllm.data.sources.recbole import read_recbole

READERS: dict[str, Callable[..., SourceData]] = {
    "movielens_100k": read_movielens_100k,
    "movielens_1m": read_movielens_1m,
    "movielens_20m": read_movielens_csv,  # also ml-25m and ml-latest: same files
    "recbole": read_recbole,
    "amazon_2018": read_amazon_2018,
    "amazon_2023": read_amazon_2023,
    "google_local": read_google_local,
}


def read_events(fmt: str, raw_dir: Path, issues: InputIssues, **options) -> SourceData:
    """The canonical events and items of the `fmt` files in `raw_dir`; `options` go to that format's reader.

    An unknown format or option fails here, naming what is accepted, before any file is opened.
    Events come in no guaranteed order: sort by `source_line` for the file's order.
    """
    if fmt not in READERS:
        raise BadInputError(f"unknown source format {fmt!r} (expected one of: {', '.join(READERS)})")
    reader = READERS[fmt]
    accepted = list(inspect.signature(reader).parameters.values())[2:]
    names = [parameter.name for parameter in accepted]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise BadInputError(f"unknown option(s) {', '.join(unknown)} for source format {fmt!r} "
                            f"(expected: {', '.join(names) or 'no options'})")
    missing = [p.name for p in accepted if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise BadInputError(f"source format {fmt!r} needs option(s) {', '.join(missing)}")
    return reader(Path(raw_dir), issues, **options)
