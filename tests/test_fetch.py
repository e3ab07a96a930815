"""Tests for `userllm.data.fetch` against a local HTTP server (no site but PyPI is reachable)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from userllm.data import fetch as fetch_mod
from userllm.data.fetch import ChecksumError, FetchError, download, fetch

RATINGS = "".join(f"{u}::{i}::{(u + i) % 5 + 1}::97830{u}{i:03d}\n" for u in range(1, 30) for i in range(1, 40))
MOVIES = "".join(f"{i}::Movie {i} (1995)::Comedy|Drama\n" for i in range(1, 40))


class FileServer:
    """Serves `files` by path, honours Range requests, and records each request's path and Range.

    `drop_once` holds paths whose next answer stops after half the body (with the full length
    announced), as a dropped connection would; `ignore_range` answers every request in full.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()
        self.ignore_range = False
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if range_header and not server.ignore_range:
                    start = int(range_header.removeprefix("bytes=").rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.path in server.drop_once:
                    server.drop_once.discard(self.path)
                    payload = payload[: len(payload) // 2]
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "RETRY_DELAY_S", 0.0)
    monkeypatch.delenv(fetch_mod.MIRROR_ENV, raising=False)


def make_zip(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return buffer.getvalue()


@pytest.fixture
def ml1m_zip(server: FileServer, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """An ml-1m layout zip on the server, with the table's md5 pointed at it."""
    data = make_zip({"ml-1m/ratings.dat": RATINGS, "ml-1m/movies.dat": MOVIES, "ml-1m/README": "readme"})
    server.files["/ml-1m.zip"] = data
    spec = fetch_mod.DATASETS["movielens_1m"]
    archive = dataclasses.replace(spec.files[0], md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(fetch_mod.DATASETS, "movielens_1m", dataclasses.replace(spec, files=(archive,)))
    return data


def leftovers(raw_dir: Path) -> list[str]:
    """Anything besides the final files: partial downloads, archives, temporary folders."""
    in_raw = [p.name for p in raw_dir.iterdir() if p.suffix in {".part", ".zip"}] if raw_dir.exists() else []
    return in_raw + [p.name for p in raw_dir.parent.iterdir() if p.name.startswith(".")]


def test_fetch_extracts_movielens_1m(server: FileServer, ml1m_zip: bytes, tmp_path: Path) -> None:
    raw_dir = tmp_path / "raw"
    assert fetch("movielens_1m", raw_dir, base_url=server.url) == raw_dir
    assert sorted(p.name for p in raw_dir.iterdir()) == ["movies.dat", "ratings.dat"]
    assert (raw_dir / "ratings.dat").read_text() == RATINGS
    assert (raw_dir / "movies.dat").read_text() == MOVIES
    assert leftovers(raw_dir) == []


def test_second_fetch_does_nothing(server: FileServer, ml1m_zip: bytes, tmp_path: Path) -> None:
    fetch("movielens_1m", tmp_path / "raw", base_url=server.url)
    requests = len(server.requests)
    fetch("movielens_1m", tmp_path / "raw", base_url=server.url)
    assert len(server.requests) == requests == 1


def test_mirror_env_var_and_placed_archive(server: FileServer, ml1m_zip: bytes, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch_mod.MIRROR_ENV, server.url)
    fetch("movielens_1m", tmp_path / "a")
    assert server.requests == [("/ml-1m.zip", None)]
    placed = tmp_path / "b"
    placed.mkdir()
    (placed / "ml-1m.zip").write_bytes(ml1m_zip)
    fetch("movielens_1m", placed)
    assert len(server.requests) == 1, "a user's archive is extracted, not downloaded again"
    assert (placed / "ratings.dat").read_text() == RATINGS
    assert (placed / "ml-1m.zip").exists(), "a user's archive is kept"


def test_interrupted_download_resumes(server: FileServer, ml1m_zip: bytes, tmp_path: Path) -> None:
    server.drop_once.add("/ml-1m.zip")
    fetch("movielens_1m", tmp_path / "raw", base_url=server.url)
    half = len(ml1m_zip) // 2
    assert server.requests == [("/ml-1m.zip", None), ("/ml-1m.zip", f"bytes={half}-")]
    assert (tmp_path / "raw" / "ratings.dat").read_text() == RATINGS


def test_cut_off_download_keeps_part_and_names_url(server: FileServer, tmp_path: Path) -> None:
    data = b"x" * 5000
    server.files["/blob.bin"] = data
    server.drop_once.add("/blob.bin")
    with pytest.raises(FetchError, match=f"could not download {server.url}/blob.bin.*is kept"):
        download(f"{server.url}/blob.bin", tmp_path / "blob.bin", progress=False, attempts=1)
    assert (tmp_path / "blob.bin.part").read_bytes() == data[:2500]
    assert not (tmp_path / "blob.bin").exists()


def test_partial_file_from_earlier_run_is_continued(server: FileServer, tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    server.files["/blob.bin"] = data
    dest = tmp_path / "blob.bin"
    (tmp_path / "blob.bin.part").write_bytes(data[:1000])
    download(f"{server.url}/blob.bin", dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert server.requests == [("/blob.bin", "bytes=1000-")]
    assert dest.read_bytes() == data
    assert not (tmp_path / "blob.bin.part").exists()


def test_server_ignoring_range_restarts(server: FileServer, tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    server.files["/blob.bin"] = data
    server.ignore_range = True
    (tmp_path / "blob.bin.part").write_bytes(b"garbage")
    download(f"{server.url}/blob.bin", tmp_path / "blob.bin", md5=hashlib.md5(data).hexdigest(), progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_unsatisfiable_range_restarts(server: FileServer, tmp_path: Path) -> None:
    data = b"short file"
    server.files["/blob.bin"] = data
    (tmp_path / "blob.bin.part").write_bytes(b"a longer stale partial file")
    download(f"{server.url}/blob.bin", tmp_path / "blob.bin", progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == data


def test_checksum_mismatch_raises_and_leaves_no_file(server: FileServer, tmp_path: Path) -> None:
    server.files["/blob.bin"] = b"payload"
    url = f"{server.url}/blob.bin"
    with pytest.raises(ChecksumError) as info:
        download(url, tmp_path / "blob.bin", md5="0" * 32, progress=False)
    message = str(info.value)
    assert url in message and "0" * 32 in message and hashlib.md5(b"payload").hexdigest() in message
    assert list(tmp_path.iterdir()) == []


def test_fetch_checksum_mismatch_leaves_no_file(server: FileServer, tmp_path: Path) -> None:
    server.files["/ml-1m.zip"] = make_zip({"ml-1m/ratings.dat": RATINGS, "ml-1m/movies.dat": MOVIES})
    raw_dir = tmp_path / "raw"
    with pytest.raises(ChecksumError, match="c4d9eecfca2ab87c1945afe126590906"):
        fetch("movielens_1m", raw_dir, base_url=server.url)
    assert list(raw_dir.iterdir()) == [] and leftovers(raw_dir) == []


def test_network_error_names_url_and_files(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as info:
        fetch("movielens_20m", tmp_path / "raw", base_url=server.url)
    message = str(info.value)
    assert f"{server.url}/ml-20m.zip" in message and "HTTP 404" in message
    assert "ratings.csv, movies.csv" in message and "ml-20m.zip" in message


def test_archive_missing_member_leaves_nothing(server: FileServer, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_zip({"ml-1m/ratings.dat": RATINGS})
    server.files["/ml-1m.zip"] = data
    spec = fetch_mod.DATASETS["movielens_1m"]
    archive = dataclasses.replace(spec.files[0], md5=hashlib.md5(data).hexdigest())
    monkeypatch.setitem(fetch_mod.DATASETS, "movielens_1m", dataclasses.replace(spec, files=(archive,)))
    with pytest.raises(FetchError, match="lacks ml-1m/movies.dat"):
        fetch("movielens_1m", tmp_path / "raw", base_url=server.url)
    assert not (tmp_path / "raw" / "ratings.dat").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_amazon_files_downloaded_by_category(server: FileServer, tmp_path: Path) -> None:
    reviews, meta = gzip.compress(b'{"asin": "A"}\n'), gzip.compress(b'{"asin": "A", "title": "t"}\n')
    server.files["/categoryFilesSmall/Movies_and_TV_5.json.gz"] = reviews
    server.files["/metaFiles2/meta_Movies_and_TV.json.gz"] = meta
    raw_dir = fetch("amazon_2018", tmp_path / "raw", category="Movies_and_TV", base_url=server.url + "/")
    assert (raw_dir / "Movies_and_TV_5.json.gz").read_bytes() == reviews
    assert (raw_dir / "meta_Movies_and_TV.json.gz").read_bytes() == meta


def test_dataset_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known datasets: movielens_100k, movielens_1m"):
        fetch("movielens_2m", tmp_path)
    with pytest.raises(ValueError, match="needs category"):
        fetch("amazon_2023", tmp_path)
    with pytest.raises(ValueError, match="takes no state"):
        fetch("amazon_2023", tmp_path, category="Books", state="Hawaii")


def test_movielens_100k_from_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    member_dir = fetch_mod.DATASETS["movielens_100k"].member_dir
    files = {"ml-100k.inter": "user_id:token\titem_id:token\n1\t2\n", "ml-100k.item": "i\n", "ml-100k.user": "u\n"}
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    wheel.write_bytes(make_zip({member_dir + name: text for name, text in files.items()} | {"recbole/x.py": ""}))
    calls = []

    def fake_pip_download(requirement: str, sha256: str, dest_dir: Path) -> Path:
        calls.append(requirement)
        return wheel

    monkeypatch.setattr(fetch_mod, "pip_download", fake_pip_download)
    raw_dir = tmp_path / "raw"
    fetch("movielens_100k", raw_dir)
    fetch("movielens_100k", raw_dir)
    assert calls == ["recbole==1.2.1"]
    assert {p.name: p.read_text() for p in raw_dir.iterdir()} == files


@pytest.mark.slow
def test_movielens_100k_from_pypi(tmp_path: Path) -> None:
    raw_dir = fetch("movielens_100k", tmp_path / "raw")
    lines = (raw_dir / "ml-100k.inter").read_text().splitlines()
    assert lines[0].startswith("user_id:token")
    assert len(lines) - 1 == 100_000
