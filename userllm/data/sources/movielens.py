"""MovieLens, as GroupLens publishes it: ml-100k, ml-1m, and the CSV releases (ml-20m, ml-25m,
ml-latest). ml-100k is also read from RecBole's atomic copy, which the defaults use.

Every release has a ratings file and a movies file whose titles carry the year, "Toy Story (1995)".
Genres come as flags (ml-100k) or `|`-separated names; the placeholders "unknown" and
"(no genres listed)" are dropped, so a movie without genres has an empty list everywhere.
User and movie ids are whole numbers in every release; they are read as numbers (`NUMBER_ID_SCHEMA`),
and a row whose id is not one is bad.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import polars as pl

from userllm.data.issues import BadInputError, InputIssues
from userllm.data.schema import NUMBER_ID_SCHEMA, SourceData
from userllm.data.sources.rawfiles import (
    check_header, field_count_check, find_file, scan_csv_strings, scan_csv_typed, scan_lines, split_fields,
    split_list,
)
from userllm.data.sources.recbole import read_recbole
from userllm.data.sources.rows import Check, finish_events, finish_items, whole_number_ids

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # the order of u.genre, which is the order of the flag columns in u.item
_NO_GENRES = ["unknown", "(no genres listed)"]
_EVENT_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
# ratings.csv as polars parses it for the fast path: no text column is built at all.
_TYPED_RATINGS = {"user_id": pl.UInt32(), "item_id": pl.UInt32(), "rating": pl.Float64(),
                  "timestamp": pl.Int64()}


def read_movielens_100k(raw_dir: Path, issues: InputIssues) -> SourceData:
    """RecBole's `ml-100k.inter`/`.item` when present, else GroupLens' `u.data`/`u.item`."""
    raw_dir = Path(raw_dir)
    if (raw_dir / "ml-100k.inter").is_file():
        source = read_recbole(raw_dir, issues, name="ml-100k")
        return replace(source, items=source.items.with_columns(_without_placeholders(pl.col("categories"))))
    if (raw_dir / "u.data").is_file():
        return _read_grouplens_100k(raw_dir, issues)
    raise BadInputError(f"{raw_dir}: no MovieLens-100K found (expected ml-100k.inter and ml-100k.item "
                        "from RecBole, or u.data and u.item from GroupLens)")


def _read_grouplens_100k(raw_dir: Path, issues: InputIssues) -> SourceData:
    """u.data: tab-separated `user item rating timestamp`; u.item: `|`-separated, latin-1."""
    movies_path = find_file(raw_dir, ["u.item"], "ml-100k movie list")
    flags = [f"_genre_{i}" for i in range(len(GENRES_100K))]
    columns = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags]
    movies = split_fields(scan_lines(movies_path, "latin-1"), "|", columns)
    genres = pl.concat_list(pl.when(pl.col(f) == "1").then(pl.lit(name)) for f, name in zip(flags, GENRES_100K))
    movies = movies.with_columns(_without_placeholders(genres.list.drop_nulls()).alias("categories"))
    ratings_path = find_file(raw_dir, ["u.data"], "ml-100k ratings")
    ratings = split_fields(scan_lines(ratings_path), "\t", _EVENT_COLUMNS)
    return _read_movielens(ratings, ratings_path, movies, movies_path, issues, field_count_check(4, "\t"),
                           field_count_check(len(columns), "|"))


def read_movielens_1m(raw_dir: Path, issues: InputIssues) -> SourceData:
    """ratings.dat `UserID::MovieID::Rating::Timestamp`, movies.dat `MovieID::Title::Genres` (latin-1)."""
    movies_path = find_file(raw_dir, ["movies.dat"], "ml-1m movie list")
    movies = split_fields(scan_lines(movies_path, "latin-1"), "::", ["item_id", "title", "genres"])
    ratings_path = find_file(raw_dir, ["ratings.dat"], "ml-1m ratings")
    ratings = split_fields(scan_lines(ratings_path), "::", _EVENT_COLUMNS)
    return _read_movielens(ratings, ratings_path, _with_genres(movies), movies_path, issues,
                           field_count_check(4, "::"), field_count_check(3, "::"))


def read_movielens_csv(raw_dir: Path, issues: InputIssues) -> SourceData:
    """ratings.csv `userId,movieId,rating,timestamp` and movies.csv `movieId,title,genres`.

    Read natively by polars, which matters: ml-20m has 20M ratings and ml-25m 25M. The ratings
    are first scanned with polars parsing the numbers, which is twice as fast as checking them as
    text and is all a clean file needs (see `finish_events`).
    """
    movies_path = find_file(raw_dir, ["movies.csv"], "MovieLens movie list")
    check_header(movies_path, "movieId,title,genres")
    movies = scan_csv_strings(movies_path, ["item_id", "title", "genres"])
    ratings_path = find_file(raw_dir, ["ratings.csv"], "MovieLens ratings")
    check_header(ratings_path, "userId,movieId,rating,timestamp")
    ratings = scan_csv_strings(ratings_path, _EVENT_COLUMNS)
    typed = scan_csv_typed(ratings_path, _TYPED_RATINGS)
    return _read_movielens(ratings, ratings_path, _with_genres(movies), movies_path, issues,
                           field_count_check(4, ","), field_count_check(3, ","), typed=typed)


def _read_movielens(ratings: pl.LazyFrame, ratings_path: Path, movies: pl.LazyFrame, movies_path: Path,
                    issues: InputIssues, ratings_check: Check, movies_check: Check,
                    typed: pl.LazyFrame | None = None) -> SourceData:
    """Check both files: what every MovieLens release shares past its parsing."""
    movies, id_checks = whole_number_ids(movies, {"item_id": "item_id"})
    movies = finish_items(movies, [movies_check, *id_checks], movies_path, issues, "item_id", "MovieLens movies")
    fields = {name: name for name in _EVENT_COLUMNS}  # the releases disagree on names; ours are neutral
    return finish_events(ratings, [ratings_check], ratings_path, issues, fields=fields, what="MovieLens ratings",
                         items=movies, items_path=movies_path, typed=typed, schema=NUMBER_ID_SCHEMA)


def _with_genres(movies: pl.LazyFrame) -> pl.LazyFrame:
    """Genres from a `|`-separated `genres` column."""
    return movies.with_columns(_without_placeholders(split_list("genres", "|")).alias("categories"))


def _without_placeholders(genres: pl.Expr) -> pl.Expr:
    """Drop the names MovieLens uses for "no genre": they would read as a genre of their own."""
    return genres.list.filter(~pl.element().is_in(_NO_GENRES))
