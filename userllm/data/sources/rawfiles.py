"""Finding a format's raw files and scanning them as rows of text with their line numbers.

Everything here keeps the physical line number of each row (`source_line`), because that is what a
user needs to find a bad row in a multi-gigabyte file, and what orders events that share a timestamp.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from userllm.data.issues import BadInputError
from userllm.data.schema import SOURCE_LINE
from userllm.data.sources.rows import Check

# Publishers ship JSON lines as .json or .jsonl, gzipped or not; users often unpack them.
JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")

LINE = "line"
_GZIP_MAGIC = b"\x1f\x8b"
# A byte that never occurs in valid text records, so that polars' CSV reader yields whole lines.
_NO_SEPARATOR = "\x1f"
# Marks a row whose number of fields is off: set by `scan_csv_strings` and `split_fields`.
WRONG_FIELD_COUNT = "_wrong_field_count"


def find_file(raw_dir: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` that exists in `raw_dir`; a missing or empty file is a hard error."""
    for name in names:
        path = Path(raw_dir) / name
        if path.is_file():
            if path.stat().st_size == 0:
                raise BadInputError(f"{path}: empty file (expected {what})")
            return path
    raise BadInputError(f"{raw_dir}: missing {what} (expected one of: {', '.join(names)})")


def json_names(*stems: str) -> list[str]:
    """Every file name a JSON-lines file with one of `stems` may have, in order of preference."""
    return [stem + suffix for stem in stems for suffix in JSON_SUFFIXES]


def first_line(path: Path, encoding: str = "utf-8") -> str:
    """The header line of a (possibly gzipped) text file, without its line ending.

    Read with plain file I/O: a polars scan for one line took time in proportion to the file (10 to
    25 ms for the 50 MB ratings.csv of the 2M-row benchmark). Undecodable bytes become U+FFFD.
    """
    with path.open("rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC
    with (gzip.open if gzipped else open)(path, "rb") as handle:
        line = handle.readline()
    return line.decode(encoding, errors="replace").removesuffix("\n").removesuffix("\r")


def scan_lines(path: Path, encoding: str = "utf-8") -> pl.LazyFrame:
    """`source_line` (1-based) and `line` for every physical line, blank ones included as null.

    Polars decompresses gzip while streaming, so this stays lazy for files larger than memory. It
    only reads UTF-8: files in another encoding (MovieLens item lists, all small) are transcoded in
    memory first. Bytes that are not valid UTF-8 become U+FFFD instead of failing the whole file.
    """
    source = path if encoding == "utf-8" else path.read_bytes().decode(encoding).encode()
    lines = pl.scan_csv(
        source, has_header=False, separator=_NO_SEPARATOR, quote_char=None, schema={LINE: pl.String},
        encoding="utf8-lossy", truncate_ragged_lines=True,
    )
    return lines.with_row_index(SOURCE_LINE, offset=1).with_columns(
        pl.col(LINE).str.strip_suffix("\r")
    )


def split_fields(lines: pl.LazyFrame, separator: str, columns: Sequence[str]) -> pl.LazyFrame:
    """Split unquoted delimited lines (`::`, tab, pipe) into string columns named `columns`.

    Blank lines are dropped; a line with too few or too many fields gets `WRONG_FIELD_COUNT`.
    """
    lines = lines.filter(pl.col(LINE).str.strip_chars() != "")
    parts = pl.col(LINE).str.split(separator)
    return lines.select(
        pl.col(SOURCE_LINE),
        *(parts.list.get(i, null_on_oob=True).alias(name) for i, name in enumerate(columns)),
        (parts.list.len() != len(columns)).alias(WRONG_FIELD_COUNT),
    )


def scan_csv_strings(path: Path, columns: Sequence[str]) -> pl.LazyFrame:
    """A quoted, comma-separated file after its header line, as string columns named `columns`.

    Native polars parsing (ml-20m has 20M rows), every column read as text so that a bad value
    flags its row instead of failing the file. An extra schema column catches rows with too many
    fields, which polars would otherwise truncate silently (`WRONG_FIELD_COUNT`); a row with too
    few has nulls, which the checks of missing fields report.
    """
    schema = {name: pl.String for name in columns} | {WRONG_FIELD_COUNT: pl.String}
    frame = _scan_csv(path, schema, missing_columns="insert", truncate_ragged_lines=True)
    return frame.with_columns(pl.col(WRONG_FIELD_COUNT).is_not_null())


def scan_csv_typed(path: Path, schema: Mapping[str, pl.DataType]) -> pl.LazyFrame:
    """A quoted, comma-separated file after its header line, each column parsed by polars as `schema` says.

    The fast way to read a big clean file: no text column is kept for a number. Any value that
    does not parse, or a row with too many fields, fails the whole scan when it is collected
    (`pl.exceptions.PolarsError`), and a row with too few has nulls: `scan_csv_strings` is the
    tolerant way that can say which rows are bad.
    """
    return _scan_csv(path, dict(schema))


def _scan_csv(path: Path, schema: dict[str, pl.DataType], **options) -> pl.LazyFrame:
    """Rows 2 onwards with `source_line` (their line, as long as no quoted field spans lines, as in
    every MovieLens release); rows without a value in any of the schema's fields are dropped."""
    frame = pl.scan_csv(
        path, has_header=False, skip_rows=1, schema=schema, encoding="utf8-lossy", row_index_name=SOURCE_LINE,
        row_index_offset=2, **options,
    )
    blank = pl.all_horizontal(pl.col(name).is_null() for name in schema if name != WRONG_FIELD_COUNT)
    return frame.filter(~blank)


def split_list(column: str, separator: str) -> pl.Expr:
    """A text field holding a list (`Comedy|Drama`, RecBole's space-separated `token_seq`)."""
    return pl.col(column).str.split(separator).list.filter(pl.element() != "")


def field_count_check(count: int, separator: str) -> Check:
    """The check for rows flagged by `split_fields` or `scan_csv_strings`."""
    return Check("wrong number of fields", pl.col(WRONG_FIELD_COUNT), f"{count} fields separated by {separator!r}")


def check_header(path: Path, expected: str, encoding: str = "utf-8") -> None:
    """Fail unless the file starts with the header its publisher writes, e.g. a ratings.csv."""
    found = first_line(path, encoding)
    if found.strip() != expected:
        raise BadInputError(f"{path}:1: unexpected header {found[:200]!r} (expected {expected!r})")
