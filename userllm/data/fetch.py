"""Obtain a dataset's raw files into a raw folder, where the readers in `data/sources/` find them.

MovieLens-100K, the offline default, comes from the RecBole wheel on PyPI (`pip download`), so it
works wherever pip does. Every other dataset comes from its public home over HTTP(S) with the
standard library: downloads resume after an interruption, are checked against the announced size
and any published checksum, and only reach their final name once complete. Where there is no
network, the user places the files in the raw folder themselves; every error names those files.

A mirror can stand in for a dataset's home: pass `base_url` or set `USERLLM_MIRROR`; files are then
looked up under the same relative paths as at the home (e.g. `<mirror>/ml-1m.zip`).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

MIRROR_ENV = "USERLLM_MIRROR"
TIMEOUT_S = 60  # per socket operation; a stalled server fails instead of hanging forever
CHUNK_BYTES = 1 << 20
RETRY_DELAY_S = 2.0  # multiplied by the attempt number, to ride out a brief network hiccup
PIP_TIMEOUT_S = 600


class FetchError(RuntimeError):
    """A raw file could not be obtained; the message names the URL or command that failed."""


class ChecksumError(FetchError):
    """A downloaded file's checksum differs from the published one; the file was deleted."""


@dataclass(frozen=True)
class RemoteFile:
    """One file at a dataset's home.

    path: relative to the dataset's base URL (so a mirror can replace the base); may hold
        `{category}` or `{state}`.
    extract: for an archive, the members to extract flat into the raw folder (the archive itself
        is deleted afterwards); empty for a file that is used as downloaded.
    """

    path: str
    md5: str | None = None
    sha256: str | None = None
    extract: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoteDataset:
    """A dataset downloaded over HTTP(S); `param` names the required argument, if any."""

    base_url: str
    files: tuple[RemoteFile, ...]
    param: str | None = None


@dataclass(frozen=True)
class WheelDataset:
    """A dataset shipped inside a wheel on PyPI, pinned by version and sha256 (from PyPI's index)."""

    requirement: str
    sha256: str
    member_dir: str
    files: tuple[str, ...]
    param: str | None = None


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
_MCAULEY = "https://datarepo.eng.ucsd.edu/mcauley_group"


def _movielens(name: str, members: tuple[str, ...], md5: str | None = None) -> RemoteDataset:
    """A GroupLens zip whose files sit in a folder named like the zip."""
    archive = RemoteFile(f"{name}.zip", md5=md5, extract=tuple(f"{name}/{member}" for member in members))
    return RemoteDataset(_GROUPLENS, (archive,))


# Checksums are included only where they are published (GroupLens's .md5 files, PyPI's index);
# the other files are checked against the size the server announces.
DATASETS: dict[str, RemoteDataset | WheelDataset] = {
    "movielens_100k": WheelDataset(
        requirement="recbole==1.2.1",
        sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        member_dir="recbole/dataset_example/ml-100k/",
        files=("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
    ),
    "movielens_1m": _movielens("ml-1m", ("ratings.dat", "movies.dat"), md5="c4d9eecfca2ab87c1945afe126590906"),
    "movielens_20m": _movielens("ml-20m", ("ratings.csv", "movies.csv"), md5="cd245b17a1ae2cc31bb14903e1204af3"),
    "movielens_25m": _movielens("ml-25m", ("ratings.csv", "movies.csv"), md5="6b51fb2759a8657d3bfcbfc42b592ada"),
    # ml-latest is updated in place, so it has no fixed checksum.
    "movielens_latest": _movielens("ml-latest", ("ratings.csv", "movies.csv")),
    "amazon_2018": RemoteDataset(
        f"{_MCAULEY}/data/amazon_v2",
        (RemoteFile("categoryFilesSmall/{category}_5.json.gz"), RemoteFile("metaFiles2/meta_{category}.json.gz")),
        param="category",
    ),
    "amazon_2018_full": RemoteDataset(
        f"{_MCAULEY}/data/amazon_v2",
        (RemoteFile("categoryFiles/{category}.json.gz"), RemoteFile("metaFiles2/meta_{category}.json.gz")),
        param="category",
    ),
    "amazon_2023": RemoteDataset(
        f"{_MCAULEY}/data/amazon_2023",
        (
            RemoteFile("raw/review_categories/{category}.jsonl.gz"),
            RemoteFile("raw/meta_categories/meta_{category}.jsonl.gz"),
        ),
        param="category",
    ),
    "google_local": RemoteDataset(
        f"{_MCAULEY}/gdrive/googlelocal",
        (RemoteFile("review-{state}_10.json.gz"), RemoteFile("meta-{state}.json.gz")),
        param="state",
    ),
}


def fetch(
    dataset: str,
    raw_dir: Path,
    *,
    category: str | None = None,
    state: str | None = None,
    base_url: str | None = None,
) -> Path:
    """Make sure `raw_dir` holds the raw files of `dataset` and return `raw_dir`.

    Files already present are kept as they are, so a user's own copy is never overwritten and a
    second call costs nothing. `category` selects an Amazon category (e.g. `Movies_and_TV`),
    `state` a Google Local state (e.g. `Hawaii`). `base_url` (else `$USERLLM_MIRROR`) replaces the
    dataset's home URL.
    """
    spec = _spec(dataset)
    params = _params(dataset, spec, category=category, state=state)
    raw_dir = Path(raw_dir)
    expected = _expected(spec, params)
    if all((raw_dir / name).is_file() for name in expected):
        log.info("%s: raw files already in %s", dataset, raw_dir)
        return raw_dir
    raw_dir.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(spec, WheelDataset):
            _fetch_wheel(spec, raw_dir)
        else:
            _fetch_remote(spec, raw_dir, params, base_url or os.environ.get(MIRROR_ENV) or spec.base_url)
    except FetchError as err:
        raise type(err)(f"{err}\n{_manual_hint(spec, params, raw_dir)}") from err
    return raw_dir


def expected_files(dataset: str, *, category: str | None = None, state: str | None = None) -> list[str]:
    """The file names that `fetch` puts into the raw folder for `dataset`."""
    spec = _spec(dataset)
    return _expected(spec, _params(dataset, spec, category=category, state=state))


def _spec(dataset: str) -> RemoteDataset | WheelDataset:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def _params(dataset: str, spec: RemoteDataset | WheelDataset, **given: str | None) -> dict[str, str]:
    """Check that exactly the argument the dataset needs is given, so a typo cannot fetch the wrong files."""
    for name, value in given.items():
        if name == spec.param and not value:
            raise ValueError(f"dataset {dataset!r} needs {name}=...")
        if name != spec.param and value:
            raise ValueError(f"dataset {dataset!r} takes no {name} (got {value!r})")
    return {spec.param: given[spec.param]} if spec.param else {}


def _expected(spec: RemoteDataset | WheelDataset, params: dict[str, str]) -> list[str]:
    if isinstance(spec, WheelDataset):
        return list(spec.files)
    return [name for file in spec.files for name in _local_names(file, params)]


def _local_names(file: RemoteFile, params: dict[str, str]) -> list[str]:
    """Names in the raw folder: the extracted members, or the downloaded file itself."""
    if file.extract:
        return [Path(member).name for member in file.extract]
    return [Path(file.path.format(**params)).name]


def _manual_hint(spec: RemoteDataset | WheelDataset, params: dict[str, str], raw_dir: Path) -> str:
    """Tell an offline user which files to put where, so the error is a way forward, not a dead end."""
    hint = f"Without network access, place these files in {raw_dir} yourself: {', '.join(_expected(spec, params))}"
    if isinstance(spec, RemoteDataset):
        archives = [Path(file.path).name for file in spec.files if file.extract]
        hint += f" (or the archive {', '.join(archives)})" if archives else ""
    return hint


def _fetch_remote(spec: RemoteDataset, raw_dir: Path, params: dict[str, str], base_url: str) -> None:
    """Download each file that is missing and extract archives.

    An archive already in `raw_dir` (placed by the user, or left by an interrupted run) is used as
    it is and kept; one downloaded here is deleted after extraction, since only its members are read.
    """
    for file in spec.files:
        if all((raw_dir / name).is_file() for name in _local_names(file, params)):
            continue
        relative = file.path.format(**params)
        target = raw_dir / Path(relative).name
        placed = target.is_file()
        if not placed:
            download(f"{base_url.rstrip('/')}/{relative}", target, md5=file.md5, sha256=file.sha256)
        if file.extract:
            extract(target, file.extract, raw_dir)
            if not placed:
                target.unlink()


def _fetch_wheel(spec: WheelDataset, raw_dir: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="userllm-wheel-") as tmp:
        wheel = pip_download(spec.requirement, spec.sha256, Path(tmp))
        extract(wheel, tuple(spec.member_dir + name for name in spec.files), raw_dir)


def pip_download(requirement: str, sha256: str, dest_dir: Path) -> Path:
    """Download (never install) the wheel for `requirement` with pip, which checks it against `sha256`.

    pip rather than urllib, so that the user's index settings (mirrors, proxies, certificates) apply.
    """
    requirements = dest_dir / "requirements.txt"
    requirements.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    wheel_dir = dest_dir / "wheel"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--require-hashes",
               "--disable-pip-version-check", "-r", str(requirements), "-d", str(wheel_dir)]
    log.info("downloading %s from the Python package index", requirement)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FetchError(f"`{' '.join(command)}` failed: {err}") from err
    wheels = sorted(wheel_dir.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise FetchError(f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return wheels[0]


def extract(archive: Path, members: tuple[str, ...], raw_dir: Path) -> None:
    """Extract `members` of a zip flat into `raw_dir`, each appearing only once it is complete.

    Members are written to a temporary folder beside `raw_dir` (same file system) and then renamed
    into place, so an interrupted extraction never leaves a truncated file that looks finished.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{raw_dir.name}.extract-", dir=raw_dir.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            missing = sorted(set(members) - set(zf.namelist()))
            if missing:
                raise FetchError(f"{archive} lacks {', '.join(missing)}")
            for member in members:
                with zf.open(member) as src, (tmp / Path(member).name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_BYTES)
        for member in members:
            os.replace(tmp / Path(member).name, raw_dir / Path(member).name)
    except zipfile.BadZipFile as err:
        raise FetchError(f"{archive} is not a valid zip file: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download(
    url: str,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    attempts: int = 3,
) -> Path:
    """Download `url` to `dest` and return `dest`.

    Bytes go to `<dest>.part`, which a later try (in this call or a later run) continues with an
    HTTP Range request; the size announced by the server and the given checksums are checked
    before `.part` is renamed to `dest`. A checksum mismatch deletes `.part` (resuming a corrupt
    file cannot help) and raises `ChecksumError`; other failures raise `FetchError` naming `url`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, part, progress)
            break
        except urllib.error.HTTPError as err:  # the server answered: trying again will not help
            raise FetchError(f"could not download {url}: HTTP {err.code} {err.reason}") from err
        except (OSError, http.client.HTTPException) as err:
            if attempt == attempts:
                raise FetchError(
                    f"could not download {url}: {err!r} (the partial file {part} is kept; a new try resumes it)"
                ) from err
            log.warning("download of %s interrupted (%r); resuming (try %d of %d)", url, err, attempt + 1, attempts)
            time.sleep(RETRY_DELAY_S * attempt)
    _verify(url, part, md5=md5, sha256=sha256)
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, progress: bool) -> None:
    """Append the rest of `url` to `part`, or start over where the server ignores the Range header."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not offset:
            raise
        # Range not satisfiable: `.part` is no prefix of the file (e.g. the file changed); start over.
        part.unlink()
        return _transfer(url, part, progress)
    with response:
        if response.status == 206:
            _check_range_start(url, part, response.headers.get("Content-Range"))
        else:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress, leave=False)
        with part.open("ab" if offset else "wb") as out, bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    _check_size(url, part, total)


def _check_range_start(url: str, part: Path, content_range: str | None) -> None:
    """Refuse a partial answer that does not continue exactly where `.part` ends (and drop `.part`)."""
    offset = part.stat().st_size
    start = content_range.removeprefix("bytes ").split("-", 1)[0] if content_range else ""
    if start != str(offset):
        part.unlink()
        raise FetchError(f"could not resume {url}: asked for bytes from {offset}, got range {content_range!r}")


def _check_size(url: str, part: Path, total: int | None) -> None:
    """A short file was cut off (raise a resumable error); a long one is corrupt (delete it)."""
    size = part.stat().st_size
    if total is None or size == total:
        return
    if size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")
    part.unlink()
    raise FetchError(f"could not download {url}: got {size} bytes, the server announced {total}")


def _verify(url: str, part: Path, *, md5: str | None, sha256: str | None) -> None:
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256)) if value}
    if not expected:
        return
    digests = {name: hashlib.new(name) for name in expected}
    with part.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            for digest in digests.values():
                digest.update(block)
    for name, digest in digests.items():
        if digest.hexdigest() != expected[name]:
            part.unlink()
            raise ChecksumError(
                f"checksum mismatch for {url}: expected {name} {expected[name]}, got {digest.hexdigest()}; "
                "the download was deleted"
            )
