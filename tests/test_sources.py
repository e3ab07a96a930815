"""Readers of raw formats: tiny files written here in each publisher's exact layout, good and bad."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import polars as pl
import pytest

from userllm.data.issues import BadInputError, InputIssues
from userllm.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, NUMBER_ID_SCHEMA, SOURCE_LINE
from userllm.data.sources import READERS, read_events, rows

REPO = Path(__file__).resolve().parents[1]
T0 = 881_250_949  # a plausible MovieLens-era time, in seconds


def write(path: Path, lines: list[str | dict], encoding: str = "utf-8") -> Path:
    """One line per entry (dicts as JSON); gzipped when the name says so."""
    text = "".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines)
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def read(fmt: str, raw_dir: Path, issues: InputIssues | None = None, **options) -> pl.DataFrame:
    """The events with their item's title and categories, sorted by line (readers keep `source_line`,
    not the row order), after checking that both tables are canonical (MovieLens' ids are numbers)."""
    source = read_events(fmt, raw_dir, issues or InputIssues(), **options)
    numbers = fmt.startswith("movielens") and not (raw_dir / "ml-100k.inter").exists()
    assert source.events.schema == (NUMBER_ID_SCHEMA if numbers else EVENT_SCHEMA)
    assert source.items.schema == ITEM_SCHEMA
    assert source.items["item_id"].is_unique().all(), "one row per item"
    titled = source.events.with_columns(pl.col("user_id", "item_id").cast(pl.String)).join(
        source.items, on="item_id", how="left"
    )
    return titled.select(list(canonical_schema())).sort(SOURCE_LINE)


def tolerant() -> InputIssues:
    """Tolerant mode that lets a tiny fixture be mostly bad, so that every reason shows up."""
    return InputIssues(max_bad_fraction=0.95)


def canonical_schema() -> dict[str, pl.DataType]:
    """The columns of `read`: every event, ids as text, with its item's title and categories."""
    names = ["user_id", "item_id", "timestamp", "rating", "title", "categories", "review_title", "review_text",
             SOURCE_LINE]
    return {name: {**EVENT_SCHEMA, **ITEM_SCHEMA, "user_id": pl.String()}[name] for name in names}


# --- MovieLens-100K, in both layouts ------------------------------------------------------------

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western"]
MOVIES_100K = [  # id, title without year, year, genres
    ("1", "Toy Story", "1995", ["Animation", "Children's", "Comedy"]),
    ("543", "Misérables, Les", "1995", ["Drama", "Musical"]),
    ("1373", "Good Morning", "1971", ["unknown"]),
]
RATINGS_100K = [("196", "1", "3", T0), ("186", "543", "5", T0 + 60), ("196", "1373", "1", T0 - 60)]


def write_grouplens_100k(raw_dir: Path) -> None:
    items = []
    for item, title, year, genres in MOVIES_100K:
        flags = "|".join("1" if genre in genres else "0" for genre in GENRES_100K)
        items.append(f"{item}|{title} ({year})|01-Jan-{year}||http://us.imdb.com/M/title-exact?x|{flags}")
    write(raw_dir / "u.item", items, encoding="latin-1")
    write(raw_dir / "u.data", ["\t".join(map(str, rating)) for rating in RATINGS_100K])


def write_recbole_100k(raw_dir: Path) -> None:
    write(raw_dir / "ml-100k.item", ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
                                     *(f"{i}\t{t}\t{y}\t{' '.join(g)}" for i, t, y, g in MOVIES_100K)])
    write(raw_dir / "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                      *("\t".join(map(str, rating)) for rating in RATINGS_100K)])


def test_movielens_100k_grouplens_layout(tmp_path):
    write_grouplens_100k(tmp_path)
    events = read("movielens_100k", tmp_path)
    assert events.schema == canonical_schema()
    assert events["user_id"].to_list() == ["196", "186", "196"]
    assert events["timestamp"].to_list() == [T0, T0 + 60, T0 - 60]
    assert events["rating"].to_list() == [3.0, 5.0, 1.0]
    assert events["title"].to_list() == ["Toy Story (1995)", "Misérables, Les (1995)", "Good Morning (1971)"]
    assert events["categories"].to_list() == [["Animation", "Children's", "Comedy"], ["Drama", "Musical"], []]
    assert events[SOURCE_LINE].to_list() == [1, 2, 3]


def test_movielens_100k_layouts_agree_and_recbole_wins(tmp_path):
    grouplens, recbole, both = tmp_path / "g", tmp_path / "r", tmp_path / "b"
    for folder in (grouplens, recbole, both):
        folder.mkdir()
    write_grouplens_100k(grouplens)
    write_recbole_100k(recbole)
    from_grouplens = read("movielens_100k", grouplens)
    from_recbole = read("movielens_100k", recbole)
    # The atomic file has a header line, so its events sit one line further down.
    assert from_recbole.with_columns(pl.col(SOURCE_LINE) - 1).equals(from_grouplens)
    write_recbole_100k(both)
    write(both / "u.data", ["1\t1\t1\t" + str(T0)])
    write(both / "u.item", ["1|X (1995)|||" + "|0" * 19])
    assert read("movielens_100k", both).equals(from_recbole)


def test_movielens_100k_names_both_layouts_when_missing(tmp_path):
    with pytest.raises(BadInputError, match=r"ml-100k\.inter.*u\.data"):
        read("movielens_100k", tmp_path)


def test_recbole_without_item_file_or_rating(tmp_path):
    write(tmp_path / "shop.inter", ["user_id:token\titem_id:token\ttimestamp:float\tbasket:token",
                                    f"u1\ti1\t{T0}.5\tb", f"u2\ti1\t{T0}\tb"])
    events = read("recbole", tmp_path, name="shop")
    assert events["timestamp"].to_list() == [T0, T0]
    assert events["rating"].to_list() == [None, None]
    assert events["title"].to_list() == [None, None]


def test_real_recbole_movielens_100k(ml100k_processed):
    """The real files, fetched from the RecBole wheel by the prepare stage (the fixture)."""
    issues = InputIssues(strict=True)
    events = read("movielens_100k", REPO / "data/raw/movielens_100k", issues)
    assert (events["user_id"].n_unique(), events["item_id"].n_unique(), events.height) == (943, 1682, 100_000)
    assert events["title"].null_count() == 0
    assert events.filter(pl.col("item_id") == "1")["title"][0] == "Toy Story (1995)"


# --- MovieLens-1M and the CSV releases ----------------------------------------------------------

def test_movielens_1m(tmp_path):
    write(tmp_path / "movies.dat", ["1::Toy Story (1995)::Animation|Children's|Comedy",
                                    "3845::Et Dieu... créa la femme (1956)::Drama"], encoding="latin-1")
    write(tmp_path / "ratings.dat", [f"1::1::5::{T0}", f"1::3845::3::{T0 + 1}\r"])  # CRLF, re-saved on Windows
    events = read("movielens_1m", tmp_path)
    assert events["title"].to_list() == ["Toy Story (1995)", "Et Dieu... créa la femme (1956)"]
    assert events["categories"].to_list() == [["Animation", "Children's", "Comedy"], ["Drama"]]
    assert events["rating"].to_list() == [5.0, 3.0]


def write_movielens_csv(raw_dir: Path, ratings: list[str]) -> None:
    write(raw_dir / "movies.csv", ["movieId,title,genres", "1,Toy Story (1995),Adventure|Animation",
                                   '11,"American President, The (1995)",Comedy|Drama|Romance',
                                   "131260,Rentun Ruusu (2001),(no genres listed)"])
    write(raw_dir / "ratings.csv", ["userId,movieId,rating,timestamp", *ratings])


def test_movielens_csv(tmp_path):
    write_movielens_csv(tmp_path, [f"1,1,3.5,{T0}", f"1,11,0.5,{T0 + 5}", f"2,131260,5.0,{T0}"])
    events = read("movielens_20m", tmp_path)
    assert events.schema == canonical_schema()
    assert events["rating"].to_list() == [3.5, 0.5, 5.0]
    assert events["title"].to_list() == ["Toy Story (1995)", "American President, The (1995)", "Rentun Ruusu (2001)"]
    assert events["categories"].to_list() == [["Adventure", "Animation"], ["Comedy", "Drama", "Romance"], []]
    assert events[SOURCE_LINE].to_list() == [2, 3, 4]


def test_movielens_csv_rejects_a_foreign_header(tmp_path):
    write_movielens_csv(tmp_path, [])
    write(tmp_path / "ratings.csv", ["user,item,rating,time", f"1,1,3.5,{T0}"])
    with pytest.raises(BadInputError, match=r"ratings\.csv:1: unexpected header.*userId,movieId,rating,timestamp"):
        read("movielens_20m", tmp_path)


ODD_BUT_VALID = [f"1,1, 3.5,{T0}", f"2,11,+4,\t{T0}", f'3,1,"05",+{T0}', f"4,11,4.,{T0}", f"5,1,.5,0{T0}",
                 f"6,11,1e0,{T0}", "", f"7,1,5,{T0}", f"008, +0011,4,{T0}"]  # padded, signed, quoted, odd decimals
# and ids written oddly; a blank line


def test_movielens_csv_fast_path_agrees_with_the_checked_path(tmp_path, monkeypatch):
    """A clean ratings.csv is read as polars parses it; one bad row sends the file down the text
    path instead. Both must keep the same rows with the same values."""
    text_scans = []
    checked_scan = rows.drop_bad_rows
    monkeypatch.setattr(rows, "drop_bad_rows", lambda *args, **kw: text_scans.append(args[2].name)
                        or checked_scan(*args, **kw))
    write_movielens_csv(tmp_path, ODD_BUT_VALID)
    fast = read("movielens_20m", tmp_path)
    assert text_scans == ["movies.csv"], "a clean ratings.csv needs no text scan"
    assert fast["rating"].to_list() == [3.5, 4.0, 5.0, 4.0, 0.5, 1.0, 5.0, 4.0]
    assert fast[SOURCE_LINE].to_list() == [2, 3, 4, 5, 6, 7, 9, 10]
    assert fast.row(-1)[:2] == ("8", "11") and fast["title"][-1] == "American President, The (1995)"
    for bad_row in (f"1,1,abc,{T0}", f"  ,1,3.5,{T0}", f"u1,1,3.5,{T0}"):  # a bad number, a blank id, a named one
        write_movielens_csv(tmp_path, [*ODD_BUT_VALID, bad_row])
        issues = tolerant()
        assert read("movielens_20m", tmp_path, issues).equals(fast)
        assert sum(issues.counts.values()) == 1 and text_scans[-1] == "ratings.csv"


# --- JSON-lines review dumps ----------------------------------------------------------------------

def amazon_2018_review(user: str, item: str, time: int = T0, **extra) -> dict:
    return {"overall": 4.0, "verified": True, "reviewTime": "11 9, 2012", "reviewerID": user, "asin": item,
            "style": {"Format:": " VHS Tape"}, "reviewerName": "Terri", "reviewText": f"text {user}",
            "summary": f"summary {user}", "unixReviewTime": time, **extra}


AMAZON_2018_META = [
    {"category": ["Movies & TV", "Movies"], "title": "Everyday Italian", "asin": "0000143561",
     "main_cat": "Movies & TV", "also_buy": [], "details": {}},
    {"category": [], "title": "Alien", "asin": "B0001", "main_cat": "Movies & TV"},
    {"category": ["Movies & TV"], "title": "Alien (again)", "asin": "B0001"},  # the 2018 dumps repeat items
]


@pytest.mark.parametrize("reviews,meta", [
    ("Movies_and_TV.json", "meta_Movies_and_TV.json"),
    ("Movies_and_TV_5.json.gz", "meta_Movies_and_TV.json.gz"),
    ("Movies_and_TV.jsonl", "meta_Movies_and_TV.jsonl.gz"),
])
def test_amazon_2018(tmp_path, reviews, meta):
    write(tmp_path / meta, AMAZON_2018_META)
    write(tmp_path / reviews, [amazon_2018_review("A1", "0000143561"), amazon_2018_review("A2", "B0001", T0 + 9)])
    events = read("amazon_2018", tmp_path)
    assert events.schema == canonical_schema()
    assert events.rows() == [
        ("A1", "0000143561", T0, 4.0, "Everyday Italian", ["Movies"], "summary A1", "text A1", 1),
        ("A2", "B0001", T0 + 9, 4.0, "Alien", [], "summary A2", "text A2", 2),
    ]


def test_amazon_2018_category_option(tmp_path):
    write(tmp_path / "meta_CDs_and_Vinyl.json.gz", [{"asin": "C1", "title": "Blue", "category": ["CDs & Vinyl"]}])
    write(tmp_path / "CDs_and_Vinyl_5.json.gz", [amazon_2018_review("A1", "C1")])
    assert read("amazon_2018", tmp_path, category="CDs_and_Vinyl")["title"].to_list() == ["Blue"]


AMAZON_2023_META = [
    {"main_category": "Movies & TV", "title": "Alien", "categories": ["Movies & TV", "Science Fiction"],
     "parent_asin": "P1", "details": {"Format": "DVD"}},
    {"main_category": "Prime Video", "title": "Heat", "categories": [], "parent_asin": "P2"},
]


def amazon_2023_review(user: str, item: str, time_ms: int = T0 * 1000 + 999, **extra) -> dict:
    return {"rating": 5.0, "title": f"title {user}", "text": f"text {user}", "images": [], "asin": "A-variant",
            "parent_asin": item, "user_id": user, "timestamp": time_ms, "helpful_vote": 0,
            "verified_purchase": True, **extra}


def test_amazon_2023_milliseconds_and_main_category(tmp_path):
    write(tmp_path / "meta_Movies_and_TV.jsonl.gz", AMAZON_2023_META)
    write(tmp_path / "Movies_and_TV.jsonl.gz", [amazon_2023_review("U1", "P1"), amazon_2023_review("U2", "P2")])
    events = read("amazon_2023", tmp_path)
    assert events["timestamp"].to_list() == [T0, T0]
    assert events["item_id"].to_list() == ["P1", "P2"]
    assert events["categories"].to_list() == [["Movies & TV", "Science Fiction"], ["Prime Video"]]
    assert events["review_title"].to_list() == ["title U1", "title U2"]
    assert events["title"].to_list() == ["Alien", "Heat"]


GOOGLE_META = [{"name": "Porter Pharmacy", "address": "Porter, 129 N Main St", "gmap_id": "0x88f16e41928ff687",
                "category": ["Pharmacy"], "avg_rating": 4.9, "MISC": {"Accessibility": ["Wheelchair"]}},
               {"name": "City Textile", "gmap_id": "0x80c2c98c0e3c16fd", "category": None}]


def google_review(user: str, place: str, time_ms: int = T0 * 1000, **extra) -> dict:
    return {"user_id": user, "name": "Song Ro", "time": time_ms, "rating": 5, "text": "Love it", "pics": None,
            "resp": {"time": time_ms, "text": "Thanks"}, "gmap_id": place, **extra}


@pytest.mark.parametrize("reviews", ["review-New_York.json", "review-New_York_10.json.gz"])
def test_google_local(tmp_path, reviews):
    write(tmp_path / "meta-New_York.json.gz", GOOGLE_META)
    write(tmp_path / reviews, [google_review("101463350189962023774", "0x88f16e41928ff687"),
                               google_review("2", "0x80c2c98c0e3c16fd", rating=None, text=None)])
    events = read("google_local", tmp_path)
    assert events.rows() == [
        ("101463350189962023774", "0x88f16e41928ff687", T0, 5.0, "Porter Pharmacy", ["Pharmacy"], None, "Love it", 1),
        ("2", "0x80c2c98c0e3c16fd", T0, None, "City Textile", None, None, None, 2),
    ]


# --- Bad input --------------------------------------------------------------------------------

def test_bad_csv_rows_are_counted_and_skipped(tmp_path):
    write_movielens_csv(tmp_path, [
        f"1,1,3.5,{T0}",        # 2 good
        f"1,1,abc,{T0}",        # 3
        "1,1,3.5",              # 4 short row
        f"1,1,3.5,{T0},9",      # 5 too many fields
        "",                     # 6 blank: not an event, not an error
        "1,1,3.5,-5",           # 7
        f"1,1,3.5,{T0 * 1000}",  # 8 milliseconds where seconds belong
        f"1,999,3.5,{T0}",      # 9
        f",1,3.5,{T0}",         # 10
        f"1,1,,{T0}",           # 11
        f"1,1,4,{T0}z",         # 12
        f"u1,1,4,{T0}",         # 13 MovieLens ids are whole numbers
        f"1,-11,4,{T0}",        # 14
        f"4294967296,1,4,{T0}",  # 15 beyond UInt32
    ])
    issues = tolerant()
    events = read("movielens_20m", tmp_path, issues)
    assert events[SOURCE_LINE].to_list() == [2]
    path = tmp_path / "ratings.csv"
    assert issues.counts == {"rating not a number": 1, "missing field timestamp": 1, "wrong number of fields": 1,
                             "timestamp out of range": 2, "item not in meta file": 1, "missing field user_id": 1,
                             "missing field rating": 1, "timestamp not a number": 1,
                             "user_id not a whole number": 2, "item_id not a whole number": 1}
    assert issues.examples["user_id not a whole number"] == [f"{path}:13", f"{path}:15"]
    assert issues.examples["timestamp out of range"] == [f"{path}:7", f"{path}:8"]
    assert issues.examples["item not in meta file"] == [f"{path}:9"]


def test_movielens_movie_ids_are_whole_numbers(tmp_path):
    write_movielens_csv(tmp_path, [f"1,1,3.5,{T0}", f"1,11,3.5,{T0}"])
    write(tmp_path / "movies.csv", ["movieId,title,genres", "01,Toy Story (1995),Animation", "M11,Heat (1995),Crime"])
    issues = tolerant()
    events = read("movielens_20m", tmp_path, issues)
    assert events["title"].to_list() == ["Toy Story (1995)"]  # "01" is movie 1; "M11" lists no movie 11
    assert issues.counts == {"item_id not a whole number": 1, "item not in meta file": 1}
    assert issues.examples["item_id not a whole number"] == [f"{tmp_path / 'movies.csv'}:3"]


def test_bad_json_rows_are_counted_and_skipped(tmp_path):
    meta = write(tmp_path / "meta_Movies_and_TV.jsonl", [*AMAZON_2023_META, "{not json", {"title": "no id"}])
    reviews = write(tmp_path / "Movies_and_TV.jsonl", [
        amazon_2023_review("U1", "P1"),                    # 1 good
        '{"user_id": "U2", "parent_asin": "P1", "timest',  # 2 truncated
        amazon_2023_review("U3", "P1", rating="abc"),      # 3
        amazon_2023_review("U4", "P1", text={"a": 1}),     # 4 object where text belongs
        amazon_2023_review("U5", "P1", time_ms=T0),        # 5 seconds where milliseconds belong
        amazon_2023_review("U6", "P9"),                    # 6
        {"parent_asin": "P1", "timestamp": T0 * 1000},     # 7
        "   ",                                             # 8 blank
        "[1, 2]",                                          # 9 not an object
        amazon_2023_review("U10", "P2", rating=None),      # 10 good: ratings may be absent
    ])
    issues = tolerant()
    events = read("amazon_2023", tmp_path, issues)
    assert events["user_id"].to_list() == ["U1", "U10"]
    assert events["rating"].to_list() == [5.0, None]
    assert issues.counts == {"malformed JSON": 3, "missing field parent_asin": 1, "rating not a number": 1,
                             "unexpected JSON type": 1, "timestamp out of range": 1, "item not in meta file": 1,
                             "missing field user_id": 1}
    assert issues.examples["malformed JSON"] == [f"{meta}:3", f"{reviews}:2", f"{reviews}:9"]
    assert issues.examples["unexpected JSON type"] == [f"{reviews}:4"]


@pytest.mark.parametrize("fmt,files,where", [
    ("movielens_20m", {"ratings.csv": ["userId,movieId,rating,timestamp", f"1,1,3.5,{T0}", f"1,1,abc,{T0}"]},
     "ratings.csv:3: rating not a number (expected a number)"),
    ("movielens_1m", {"ratings.dat": [f"1::1::5::{T0}", "1::1::5"]},
     "ratings.dat:2: wrong number of fields (expected 4 fields separated by '::')"),
    ("movielens_100k", {"u.data": [f"1\t1\t5\t{T0}", f"1\t1\t5\t{T0}", "1\t1\t5\t-1"]},
     "u.data:3: timestamp out of range"),
    ("amazon_2018", {"Movies_and_TV.json": [amazon_2018_review("A1", "B0001"), "{oops"]},
     "Movies_and_TV.json:2: malformed JSON (expected one JSON object per line)"),
    ("amazon_2018", {"Movies_and_TV.json": [amazon_2018_review("A1", "nope")]},
     "Movies_and_TV.json:1: item not in meta file (expected an item listed in meta_Movies_and_TV.json)"),
    ("google_local", {"review-New_York.json": [google_review("", "0x88f16e41928ff687")]},
     "review-New_York.json:1: missing field user_id"),
    ("google_local", {"meta-New_York.json": [*GOOGLE_META, {"name": "x", "gmap_id": "1", "category": {"Bar": 1}}]},
     "meta-New_York.json:3: unexpected JSON type"),
])
def test_strict_mode_fails_on_the_first_bad_row(tmp_path, fmt, files, where):
    write_valid_sources(tmp_path)
    for name, lines in files.items():
        write(tmp_path / name, lines)
    with pytest.raises(BadInputError, match="^" + re.escape(str(tmp_path / where))):
        read(fmt, tmp_path, InputIssues(strict=True))


def write_valid_sources(raw_dir: Path) -> None:
    """Good files of every format, for a test to spoil one of them."""
    write_grouplens_100k(raw_dir)
    write_movielens_csv(raw_dir, [f"1,1,3.5,{T0}"])
    write(raw_dir / "movies.dat", ["1::Toy Story (1995)::Animation"], encoding="latin-1")
    write(raw_dir / "ratings.dat", [f"1::1::5::{T0}"])
    write(raw_dir / "meta_Movies_and_TV.json", AMAZON_2018_META)
    write(raw_dir / "Movies_and_TV.json", [amazon_2018_review("A1", "B0001")])
    write(raw_dir / "meta-New_York.json", GOOGLE_META)
    write(raw_dir / "review-New_York.json", [google_review("1", "0x88f16e41928ff687")])


def test_valid_sources_read_strictly(tmp_path):
    write_valid_sources(tmp_path)
    for fmt in ("movielens_100k", "movielens_1m", "movielens_20m", "amazon_2018", "google_local"):
        assert read(fmt, tmp_path, InputIssues(strict=True)).height >= 1, fmt


def test_too_many_bad_rows_fail_the_file(tmp_path):
    write_movielens_csv(tmp_path, [f"1,1,3.5,{T0}"] * 18 + [f"1,1,abc,{T0}"] * 2)
    with pytest.raises(BadInputError, match=r"ratings\.csv: 2 of 20 rows are bad .*ratings\.csv:20"):
        read("movielens_20m", tmp_path, InputIssues(max_bad_fraction=0.05))
    assert read("movielens_20m", tmp_path, InputIssues(max_bad_fraction=0.1)).height == 18


@pytest.mark.parametrize("fmt,options,expected", [
    ("movielens_1m", {}, "movies.dat"),
    ("movielens_20m", {}, "movies.csv"),
    ("amazon_2018", {"category": "Books"}, "Books.json, Books.jsonl, Books.json.gz, Books.jsonl.gz, Books_5.json"),
    ("amazon_2023", {}, "Movies_and_TV.jsonl.gz"),
    ("google_local", {"state": "Texas"}, "review-Texas.json"),
    ("recbole", {"name": "ml-1m"}, "ml-1m.inter"),
])
def test_missing_files_name_what_was_expected(tmp_path, fmt, options, expected):
    with pytest.raises(BadInputError, match="^" + re.escape(f"{tmp_path}: missing ") + r".*\(expected one of: .*"
                       + re.escape(expected)):
        read(fmt, tmp_path, **options)


def test_empty_files_are_hard_errors(tmp_path):
    write_movielens_csv(tmp_path, [])
    with pytest.raises(BadInputError, match=r"ratings\.csv: no rows \(expected MovieLens ratings\)"):
        read("movielens_20m", tmp_path)
    (tmp_path / "ratings.csv").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"ratings\.csv: empty file"):
        read("movielens_20m", tmp_path)
    write(tmp_path / "meta_Movies_and_TV.json.gz", AMAZON_2018_META)
    write(tmp_path / "Movies_and_TV.json.gz", [])
    with pytest.raises(BadInputError, match=r"Movies_and_TV\.json\.gz: no rows \(expected JSON lines of reviews\)"):
        read("amazon_2018", tmp_path)


def test_unknown_format_and_option(tmp_path):
    with pytest.raises(BadInputError, match=r"unknown source format 'netflix'.*movielens_100k, movielens_1m"):
        read("netflix", tmp_path)
    with pytest.raises(BadInputError, match=r"unknown option\(s\) catgory .*'amazon_2018' \(expected: category\)"):
        read("amazon_2018", tmp_path, catgory="Books")
    with pytest.raises(BadInputError, match=r"'recbole' needs option\(s\) name"):
        read("recbole", tmp_path)
    assert set(READERS) >= {"movielens_100k", "movielens_1m", "movielens_20m", "recbole", "amazon_2018",
                            "amazon_2023", "google_local"}
