"""Prepare-stage benchmark: the project's polars pipeline against plain pandas on ML-20M-shaped data.

Real MovieLens-20M cannot be downloaded everywhere, so a synthetic copy with its shape is generated
once (seeded) into a cache folder: same files, header and quoting, 20M half-star ratings by about
138k users over 27k movies, long-tailed item popularity and user activity, every user >= 20 ratings.
Then each implementation runs in its own fresh Python process, so that its peak RSS is its own and
not the parent's or the other implementation's:

  (a) project: `userllm.data.prepare.prepare_dataset` with the `movielens_20m` reader;
  (b) pandas: the same steps written idiomatically with pandas defaults (see `pandas_prepare`).

Both must produce the same number of events, users and items. The table is printed and written to
`prepare_bench.md` in `--results-dir` (default `benchmarks/results/`), the raw numbers to
`prepare_bench.json`.

    python benchmarks/prepare_bench.py                 # full 20M rows
    python benchmarks/prepare_bench.py --rows 2000000  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

# numpy, polars, pandas and userllm are imported inside the functions that use them: this file is
# also the worker each measured process runs, and a worker must load only its own libraries.

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE_NAME = "ml20m_synth"
GENERATOR_VERSION = 2  # bump when the generator changes, so that cached files are rebuilt

# The published MovieLens-20M: 20,000,263 ratings by 138,493 users; movies.csv lists 27,278 movies.
ML20M_ROWS, ML20M_USERS, ML20M_MOVIES, ML20M_MAX_MOVIE_ID = 20_000_263, 138_493, 27_278, 131_262
ML20M_FIRST_TIME, ML20M_LAST_TIME = 789_652_004, 1_427_784_002  # 1995-01-09 .. 2015-03-31
MIN_RATINGS_PER_USER = 20  # GroupLens kept only users with at least 20 ratings
MAX_CATALOGUE_SHARE = 0.35  # the most active ML-20M user rated about 35% of the rated movies
RATING_SHARES = {  # ML-20M's rating histogram, in shares of all ratings
    0.5: 0.012, 1.0: 0.034, 1.5: 0.014, 2.0: 0.072, 2.5: 0.044,
    3.0: 0.214, 3.5: 0.110, 4.0: 0.278, 4.5: 0.077, 5.0: 0.145,
}
GENRES = {  # ML-20M genre names with rough relative frequencies over movies
    "Drama": 13.3, "Comedy": 8.4, "Thriller": 4.2, "Romance": 4.1, "Action": 3.5, "Crime": 2.9,
    "Horror": 2.6, "Documentary": 2.5, "Adventure": 2.3, "Sci-Fi": 1.7, "Mystery": 1.5, "Fantasy": 1.4,
    "War": 1.2, "Children": 1.1, "Musical": 1.0, "Animation": 1.0, "Western": 0.7, "Film-Noir": 0.3,
    "IMAX": 0.2,
}
NO_GENRES = "(no genres listed)"
ARTICLES = ("The", "A", "An", "Les", "La", "Das")  # MovieLens moves leading articles: "X, The (1995)"
WORDS = (  # title words, from ML-20M's first titles
    "American", "President", "Toy", "Story", "Jumanji", "Grumpier", "Old", "Men", "Waiting",
    "Exhale", "Father", "Bride", "Heat", "Sabrina", "Tom", "Huck", "Sudden", "Death", "Golden",
    "Eye", "Dracula", "Balto", "Nixon", "Cutthroat", "Island", "Casino", "Sense", "Sensibility",
    "Four", "Rooms", "Ace", "Ventura", "Money", "Train", "Get", "Shorty", "Copycat", "Assassins",
    "Powder", "Leaving", "Las", "Vegas", "Othello", "Now", "Then", "Persuasion", "City", "Lost",
    "Children", "Shanghai", "Triad", "Dangerous", "Minds", "Twelve", "Monkeys", "Babe", "Dead",
    "Man", "Walking", "Across", "Sea", "Time", "It", "Takes", "Two", "Clueless", "Cry", "Beloved",
    "Country", "Richard", "Pocahontas", "Usual", "Suspects",
)
ZIPF_EXPONENT, ZIPF_OFFSET = 2.0, 250  # popularity of rank r ~ (r + offset)^-exponent: ML-20M's head and tail
HEAVY_USER_SHARE = 1 / 50  # users rating more than this share of the catalogue are sampled exactly


@dataclass(frozen=True)
class Shape:
    """What the synthetic dataset looks like; equal shapes (and generator) give identical files."""

    rows: int
    users: int
    items: int
    seed: int
    order: str = "user"  # ratings.csv's row order: "user" (then movie, as GroupLens ships it) or "time"

    def cache_dir(self, root: Path) -> Path:
        """The default shape lives in `ml20m_synth/`; any other gets a folder named after it."""
        default = Shape(20_000_000, default_users(20_000_000), ML20M_MOVIES, 0)
        name = DEFAULT_CACHE_NAME if replace(self, order="user") == default else (
            f"{DEFAULT_CACHE_NAME}_{self.rows}r_{self.users}u_{self.items}i_s{self.seed}")
        return root / (name if self.order == "user" else f"{name}_by_{self.order}")


def default_users(rows: int) -> int:
    """ML-20M's ratings per user (about 144), so that a smaller run keeps the same density."""
    return max(1, round(rows * ML20M_USERS / ML20M_ROWS))


# ---------------------------------------------------------------------------------------------
# Synthetic data


def ensure_dataset(shape: Shape, folder: Path) -> Path:
    """Reuse `folder` if it holds this shape's files, else generate them into it atomically."""
    spec, expected = folder / "shape.json", {**asdict(shape), "generator": GENERATOR_VERSION}
    if spec.exists() and json.loads(spec.read_text()) == expected:
        print(f"reusing {folder}", flush=True)
        return folder
    start = time.perf_counter()
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_dataset(shape, tmp)
        (tmp / "shape.json").write_text(json.dumps(expected))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left if writing failed
    print(f"generated {folder} in {time.perf_counter() - start:.1f} s", flush=True)
    return folder


def write_dataset(shape: Shape, folder: Path) -> None:
    """ratings.csv sorted by userId then movieId, as GroupLens ships it (or, for `order="time"`, the
    same rows sorted by timestamp, as an event log holds them), and movies.csv."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(shape.seed)
    movie_ids = np.sort(rng.choice(max(ML20M_MAX_MOVIE_ID, shape.items), shape.items, replace=False) + 1)
    by_popularity = rng.permutation(movie_ids)  # rank r's movie; popularity is unrelated to the id
    counts = user_activity(rng, shape)
    user, rank = sample_ratings(rng, counts, shape.items)
    shares = np.array(list(RATING_SHARES.values()))
    ratings = pl.DataFrame({
        "userId": (user + 1).astype(np.int32),
        "movieId": by_popularity[rank].astype(np.int32),
        "rating": np.array(list(RATING_SHARES))[rng.choice(len(shares), len(user), p=shares / shares.sum())],
        "timestamp": timestamps(rng, user),
    }).sort("userId", "movieId")
    if shape.order == "time":
        ratings = ratings.sort("timestamp", maintain_order=True)
    ratings.write_csv(folder / "ratings.csv")
    movies_table(rng, movie_ids).write_csv(folder / "movies.csv")


def user_activity(rng, shape: Shape):
    """Ratings per user: 20 plus a log-normal excess (median near 70, mean 144, as in ML-20M).

    The excess is scaled to hit `shape.rows` exactly and capped at a third of the catalogue; what
    the cap removes goes to other users in proportion to their activity.
    """
    import numpy as np

    budget = shape.rows - MIN_RATINGS_PER_USER * shape.users
    cap = int(MAX_CATALOGUE_SHARE * shape.items) - MIN_RATINGS_PER_USER
    if budget < 0 or budget > cap * shape.users:
        raise SystemExit(f"--rows {shape.rows} does not fit {shape.users} users with {MIN_RATINGS_PER_USER} "
                         f"to {cap + MIN_RATINGS_PER_USER} ratings each over {shape.items} movies")
    weight = rng.lognormal(0.0, 1.3, shape.users)
    excess = np.minimum(np.floor(weight / weight.sum() * budget).astype(np.int64), cap)
    while (left := budget - int(excess.sum())) > 0:
        room = excess < cap
        extra = rng.multinomial(left, weight[room] / weight[room].sum())
        excess[room] = np.minimum(excess[room] + extra, cap)
    return excess + MIN_RATINGS_PER_USER


def popularity(items: int):
    """Zipf-Mandelbrot probabilities by popularity rank: a head near ML-20M's, a long thin tail."""
    import numpy as np

    weight = (np.arange(1, items + 1) + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    return weight / weight.sum()


def sample_ratings(rng, counts, items: int):
    """For every user, `counts[u]` distinct movie ranks drawn by popularity without replacement.

    Light users: rejection, which converges in a few rounds. Heavy users (more than a 50th of the
    catalogue) exhaust the popular head, where rejection wastes most draws, so they take the exact
    top `counts[u]` of Gumbel-style keys instead, in chunks to bound memory.
    """
    import numpy as np

    heavy = counts > HEAVY_USER_SHARE * items
    users = np.arange(len(counts))
    parts = [light_sample(rng, users[~heavy], counts[~heavy], items),
             heavy_sample(rng, users[heavy], counts[heavy], items)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def light_sample(rng, users, counts, items: int):
    """Sampling without replacement by rejection: each user keeps their first new draws, in order.

    Every round draws `factor` times what each user still lacks, drops draws the user already
    has or drew earlier in the round, and keeps the first ones up to the count: that is exactly
    successive sampling. The factor doubles each round, because the users still short are those
    whose picks already cover most of the popular head. `users` must be ascending.
    """
    import numpy as np

    cdf = np.cumsum(popularity(items))
    target = np.zeros(users.max(initial=-1) + 1, np.int64)
    target[users] = counts
    done, pending = [np.empty(0, np.int64)], np.empty(0, np.int64)  # pending: sorted keys of short users
    short, lacking, factor = users, counts, 1.25
    while len(short):
        draws = np.ceil(lacking * factor).astype(np.int64)
        ranks = np.minimum(np.searchsorted(cdf, rng.random(int(draws.sum())), side="right"), items - 1)
        keys = np.repeat(short * items, draws) + ranks
        keys = keys[~np.isin(keys, pending, kind="sort")]
        keys = keys[np.sort(np.unique(keys, return_index=True)[1])]  # first copy of each, draw order kept
        owner = keys // items
        position = np.arange(len(keys)) - np.searchsorted(owner, owner)  # rank among the user's new draws
        wanted = np.zeros_like(target)
        wanted[short] = lacking
        pending = np.sort(np.concatenate([pending, keys[position < wanted[owner]]]))
        owner = pending // items
        have = np.bincount(owner, minlength=len(target))
        complete = (have == target)[owner]
        done.append(pending[complete])
        pending = pending[~complete]
        short = short[have[short] < target[short]]
        lacking, factor = target[short] - have[short], factor * 2
    keys = np.concatenate(done)
    return keys // items, keys % items


def heavy_sample(rng, users, counts, items: int, cells: int = 1 << 24):
    """Exact sampling without replacement: each user's top `count` of p / Exp(1) (Gumbel top-k).

    Users are sorted by count so that a chunk's partition depth (its largest count) stays close
    to what each of its rows needs; `cells` bounds a chunk's float32 key matrix (64 MB).
    """
    import numpy as np

    p = popularity(items).astype(np.float32)
    order = np.argsort(counts, kind="stable")
    users, counts = users[order], counts[order]
    rows = max(1, cells // items)
    picked_users, picked_ranks = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for start in range(0, len(users), rows):
        chunk_users, chunk_counts = users[start:start + rows], counts[start:start + rows]
        with np.errstate(divide="ignore"):  # an exponential draw of 0 makes an infinite key: fine
            keys = p / rng.standard_exponential((len(chunk_users), items), dtype=np.float32)
        depth = int(chunk_counts.max())
        top = np.argpartition(-keys, depth - 1, axis=1)[:, :depth]
        best_first = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
        picked_users.append(np.repeat(chunk_users, chunk_counts))
        picked_ranks.append(best_first[np.arange(depth) < chunk_counts[:, None]])
    return np.concatenate(picked_users), np.concatenate(picked_ranks)


def timestamps(rng, user):
    """Seconds in ML-20M's window: each user rates within a span from minutes to years.

    Short spans with many ratings give same-second ties, which the stable sort must keep in order.
    """
    import numpy as np

    users = int(user.max()) + 1
    window = ML20M_LAST_TIME - ML20M_FIRST_TIME
    span = np.clip(rng.lognormal(np.log(86_400), 3.0, users), 60, window).astype(np.int64)
    first = ML20M_FIRST_TIME + (rng.random(users) * (window - span)).astype(np.int64)
    return first[user] + (rng.random(len(user)) * span[user]).astype(np.int64)


def movies_table(rng, movie_ids):
    """movieId, title, genres: titles with years, moved articles, a.k.a.'s and quotes, like GroupLens'."""
    import numpy as np
    import polars as pl

    genre_names = list(GENRES)
    weights = np.array(list(GENRES.values()))
    titles, genres = [], []
    for _ in movie_ids:
        titles.append(movie_title(rng))
        if rng.random() < 0.01:
            genres.append(NO_GENRES)
            continue
        count = rng.choice([1, 2, 3, 4], p=[0.4, 0.35, 0.2, 0.05])
        genres.append("|".join(rng.choice(genre_names, count, replace=False, p=weights / weights.sum())))
    return pl.DataFrame({"movieId": movie_ids.astype(np.int32), "title": titles, "genres": genres})


def movie_title(rng) -> str:
    """One title such as "American President, The (1995)"; the CSV writer quotes where needed."""
    name = " ".join(rng.choice(WORDS, rng.integers(1, 5)))
    year = 1915 + int(100 * rng.beta(4, 1.5))
    kind = rng.random()
    if kind < 0.12:
        name = f"{name}, {rng.choice(ARTICLES)}"
    elif kind < 0.15:
        name = f"{name} (a.k.a. {rng.choice(WORDS)} {rng.choice(WORDS)})"
    elif kind < 0.16:
        name = f'"{rng.choice(WORDS)} {rng.choice(WORDS)}" {name}'
    return f"{name} ({year})"


# ---------------------------------------------------------------------------------------------
# The two implementations, each run inside a worker process


def project_prepare(raw_dir: Path, out_dir: Path, min_events: int) -> dict[str, int]:
    """(a) The project's prepare stage, exactly as `make data DATA=movielens_20m` calls it."""
    from userllm.data.prepare import DatasetSpec, prepare_dataset

    spec = DatasetSpec(name="movielens_20m", reader="movielens_20m", raw_dir=raw_dir,
                       processed_dir=out_dir / "movielens_20m", min_events=min_events, fetch=False)
    meta = json.loads((prepare_dataset(spec, force=True) / "meta.json").read_text())
    return {name: int(meta[name]) for name in ("rows_in", "events", "users", "items")}


def pandas_prepare(raw_dir: Path, out_dir: Path, min_events: int) -> dict[str, int]:
    """(b) The same steps as a careful pandas user writes them: vectorised, library defaults.

    Read both CSVs, keep events of listed movies, drop exact duplicates (first kept), keep users
    with >= `min_events` events, stable-sort each user's events by time, map items (by descending
    count), ratings and genres to ids from 2 (0 padding, 1 unknown), mark the split (last event
    test, second to last validation) and write events, users and items as parquet.
    """
    import numpy as np
    import pandas as pd

    ratings = pd.read_csv(raw_dir / "ratings.csv")
    movies = pd.read_csv(raw_dir / "movies.csv")
    rows_in = len(ratings)
    ratings = ratings[ratings["movieId"].isin(movies["movieId"])].drop_duplicates()
    per_user = ratings.groupby("userId")["userId"].transform("size")
    ratings = ratings[per_user >= min_events].sort_values(["userId", "timestamp"], kind="stable",
                                                          ignore_index=True)

    items = pandas_items(ratings, movies)
    item = pd.Index(items["item_id"]).get_indexer(ratings["movieId"])
    rating_values = np.sort(ratings["rating"].unique())
    n_events = ratings.groupby("userId", sort=False).size()
    from_end = np.repeat(n_events.cumsum().to_numpy(), n_events.to_numpy()) - 1 - np.arange(len(ratings))
    events = pd.DataFrame({
        "user": np.repeat(np.arange(len(n_events), dtype=np.int32), n_events.to_numpy()),
        "item": items["item"].to_numpy()[item],
        "rating": (np.searchsorted(rating_values, ratings["rating"]) + 2).astype(np.int32),
        "category": items["category"].to_numpy()[item],
        "timestamp": ratings["timestamp"],
        "split": np.minimum(from_end, 2).astype(np.int8),  # 0 test, 1 validation, 2 training
    })
    users = pd.DataFrame({"user": np.arange(len(n_events), dtype=np.int32), "user_id": n_events.index,
                          "n_events": n_events.to_numpy(np.int32)})
    events.to_parquet(out_dir / "events.parquet", index=False)
    users.to_parquet(out_dir / "users.parquet", index=False)
    items.to_parquet(out_dir / "items.parquet", index=False)
    return {"rows_in": rows_in, "events": len(events), "users": len(users), "items": len(items)}


def pandas_items(ratings, movies):
    """Item table: ids by descending event count (ties by movieId), genres as lists, first genre's id."""
    import numpy as np
    import pandas as pd

    counts = ratings["movieId"].value_counts().rename_axis("item_id").reset_index()
    counts = counts.sort_values(["count", "item_id"], ascending=[False, True], ignore_index=True)
    items = counts.merge(movies.rename(columns={"movieId": "item_id"}), on="item_id", how="left")
    items["item"] = np.arange(2, len(items) + 2, dtype=np.int32)
    items["categories"] = [[g for g in names.split("|") if g != NO_GENRES] for names in items["genres"]]
    totals = items[["categories", "count"]].explode("categories").dropna().groupby("categories")["count"].sum()
    totals = totals.reset_index().sort_values(["count", "categories"], ascending=[False, True])
    category_ids = pd.Series(np.arange(2, len(totals) + 2), index=totals["categories"])
    items["category"] = items["categories"].str[0].map(category_ids).fillna(1).astype(np.int32)
    return items[["item", "item_id", "title", "categories", "category", "count"]]


IMPLEMENTATIONS = {"project": project_prepare, "pandas": pandas_prepare}


def worker(kind: str, raw_dir: Path, out_dir: Path, min_events: int) -> None:
    """Run one implementation in this fresh process and print its numbers as one JSON line.

    Libraries are imported before the clock starts: import time is not preparation time, but the
    memory they take is part of the peak, as it is for a user.
    """
    if kind == "project":
        import userllm.data.prepare as library
    else:
        import pandas as library
        import pyarrow.parquet  # noqa: F401  (pandas imports it lazily, on the first write)
    import_rss = memory_mb("VmRSS")
    start = time.perf_counter()
    counts = IMPLEMENTATIONS[kind](raw_dir, out_dir, min_events)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": memory_mb("VmHWM"), "import_rss_mb": import_rss,
                      "code": library.__file__, **counts}))


def memory_mb(field: str) -> float:
    """This process's current (VmRSS) or peak (VmHWM) resident memory, from /proc (Linux).

    Not `getrusage`: its `ru_maxrss` survives fork and exec, so a child would report at least the
    RSS its parent had when it was started, here the parent that generated the data.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


# ---------------------------------------------------------------------------------------------
# Measuring and reporting


@dataclass(frozen=True)
class Contender:
    """One implementation to measure: its worker, and a checkout to import `userllm` from, if any."""

    label: str
    kind: str
    checkout: Path | None = None


def contenders(args: argparse.Namespace) -> list[Contender]:
    """This checkout's project, any `--project-checkout` (e.g. with a patch applied), then pandas."""
    found = [Contender("project (polars)", "project")]
    found += [Contender(f"project @ {path}", "project", path.resolve()) for path in args.project_checkout]
    return found if args.skip_pandas else [*found, Contender("pandas", "pandas")]


def measure(contender: Contender, raw_dir: Path, min_events: int, results: Path) -> dict:
    """One run in a child process; its output folder is measured, then removed."""
    env = dict(os.environ)
    if contender.checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(contender.checkout), env.get("PYTHONPATH")]))
    out_dir = Path(tempfile.mkdtemp(dir=results, prefix=f".prepare-{contender.kind}-"))
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", contender.kind, "--raw-dir", str(raw_dir),
             "--out-dir", str(out_dir), "--min-events", str(min_events)],
            stdout=subprocess.PIPE, text=True, check=True, env=env,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["output_mb"] = sum(p.stat().st_size for p in out_dir.rglob("*.parquet")) / 2**20
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    result["rows_per_s"] = result["rows_in"] / result["seconds"]
    print(f"{contender.label}: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def warm_page_cache(raw_dir: Path) -> None:
    """Read the raw files once, so that neither implementation pays for the first disk read."""
    for path in raw_dir.glob("*.csv"):
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass


def summarize(runs: list[dict]) -> dict:
    """Median time over repeats (robust to a busy neighbour on shared cores), worst peak memory."""
    seconds = statistics.median(r["seconds"] for r in runs)
    return {**runs[-1], "seconds": seconds, "rows_per_s": runs[-1]["rows_in"] / seconds,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "runs": [r["seconds"] for r in runs]}


def check_same_counts(summary: dict[str, dict]) -> None:
    """Every implementation must keep the same events, users and items, or the race is void."""
    (first, reference), *others = summary.items()
    for label, result in others:
        for name in ("rows_in", "events", "users", "items"):
            assert result[name] == reference[name], f"{name}: {first} {reference[name]} != {label} {result[name]}"


COLUMNS = (("wall s", "seconds", "{:.1f}"), ("rows/s", "rows_per_s", "{:,.0f}"),
           ("peak RSS MB", "peak_rss_mb", "{:,.0f}"), ("RSS after imports MB", "import_rss_mb", "{:,.0f}"),
           ("parquet MB", "output_mb", "{:,.0f}"))


def markdown(summary: dict[str, dict], context: dict) -> str:
    """The results table with a ratio row (pandas / project) per project, and the issue's goals."""
    reference = next(iter(summary.values()))
    lines = [
        (f"## prepare: {reference['rows_in']:,} ratings, {context['shape']['users']:,} users, "
         f"{context['shape']['items']:,} movies, min_events={context['min_events']}"),
        "",
        (f"{context['cpus']} CPUs, load average {context['load_before']:.1f} before the runs; "
         f"python {context['python']}, polars {context['polars']}, pandas {context['pandas']}; "
         f"median wall time of {context['repeat']} run(s). Kept: {reference['events']:,} events, "
         f"{reference['users']:,} users, {reference['items']:,} items."),
        "",
        "| implementation | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for label, result in summary.items():
        lines.append(f"| {label} | " + " | ".join(fmt.format(result[key]) for _, key, fmt in COLUMNS) + " |")
    pandas = summary.get("pandas")
    projects = [label for label in summary if label != "pandas"]
    if pandas:
        for label in projects:
            ratios = [pandas[key] / summary[label][key] for _, key, _ in COLUMNS]
            lines.append(f"| pandas / {label} | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |")
        lines += ["", *(goals(label, summary[label], pandas) for label in projects)]
    return "\n".join(lines) + "\n"


def goals(label: str, project: dict, pandas: dict) -> str:
    """The issue's targets: >= 5x faster than pandas, less peak memory, 20M rows in under a minute."""
    speedup = pandas["seconds"] / project["seconds"]
    checks = [
        f">= 5x faster than pandas: {'yes' if speedup >= 5 else 'no'} ({speedup:.2f}x)",
        f"lower peak RSS: {'yes' if project['peak_rss_mb'] < pandas['peak_rss_mb'] else 'no'}",
    ]
    if project["rows_in"] >= 20_000_000:
        checks.append(f"20M rows under 60 s: {'yes' if project['seconds'] < 60 else 'no'}")
    return f"Goals, {label}: " + "; ".join(checks) + "."


def run_benchmark(args: argparse.Namespace) -> None:
    """Generate or reuse the data, run each implementation `repeat` times, report."""
    import pandas
    import polars

    shape = Shape(args.rows, args.users or default_users(args.rows), args.items, args.seed, args.order)
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    raw_dir = ensure_dataset(shape, args.cache_dir or shape.cache_dir(results))
    warm_page_cache(raw_dir)
    context = {"shape": asdict(shape), "min_events": args.min_events, "repeat": args.repeat,
               "cpus": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()[0],
               "python": platform.python_version(), "polars": polars.__version__, "pandas": pandas.__version__}
    runs: dict[str, list[dict]] = {c.label: [] for c in contenders(args)}
    for _ in range(args.repeat):
        for contender in contenders(args):  # interleaved, so that a burst of load elsewhere hits all alike
            runs[contender.label].append(measure(contender, raw_dir, args.min_events, results))
    summary = {label: summarize(measured) for label, measured in runs.items()}
    check_same_counts(summary)
    table = markdown(summary, context)
    print("\n" + table)
    (results / "prepare_bench.md").write_text(table)
    (results / "prepare_bench.json").write_text(json.dumps({"context": context, "results": summary}, indent=2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000, help="ratings to generate")
    parser.add_argument("--users", type=int, help="users (default: ML-20M's ratings per user, 138k at 20M)")
    parser.add_argument("--items", type=int, default=ML20M_MOVIES, help="movies in movies.csv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=["user", "time"], default="user",
                        help="ratings.csv's row order: by user as GroupLens ships it, or by time as an event log")
    parser.add_argument("--min-events", type=int, default=52, help="the paper's protocol: history 50 + 2")
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation; the median is reported")
    parser.add_argument("--skip-pandas", action="store_true", help="measure the project only")
    parser.add_argument("--project-checkout", type=Path, action="append", default=[],
                        help="also measure the userllm of another checkout (a patch under review); repeatable")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="where the tables, the synthetic files and the runs' outputs go (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path,
                        help="where the synthetic files live (default: <results-dir>/ml20m_synth*)")
    parser.add_argument("--worker", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--raw-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args.worker, args.raw_dir, args.out_dir, args.min_events)
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
