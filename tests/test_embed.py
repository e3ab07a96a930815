"""`make embed` on the real MovieLens-100K: a smoke-pretrained encoder, then every user's embedding."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from tests.conftest import REPO, run_pipeline
from userllm.data.timelines import Timelines
from userllm.encoder.export import load_encoder
from userllm.encoder.model import EncoderConfig, UserEncoder

HISTORY_LEN = 50  # the data default


@pytest.fixture(scope="module")
def stage_dir(ml100k_processed, tmp_path_factory) -> Path:
    """A smoke-sized encoder pretrained on the real data, and its embeddings in both layouts."""
    output_dir = tmp_path_factory.mktemp("outputs")
    paths = f"paths.output_dir={output_dir}"
    run_pipeline("pretrain", "experiment=smoke", "logger=csv", paths, "trainer.max_epochs=1",
                 "+trainer.limit_train_batches=3")
    stage = output_dir / "movielens_100k"
    result = run_pipeline("embed", paths)
    (stage / "embed.log").write_text(result.stdout + result.stderr)
    run_pipeline("embed", paths, "embed.full_sequence=true", "embed.batch_size=100",
                 f"out_file={stage / 'embed' / 'full.parquet'}")
    return stage


@pytest.fixture(scope="module")
def embeddings(stage_dir) -> pl.DataFrame:
    return pl.read_parquet(stage_dir / "embed" / "user_embeddings.parquet")


@pytest.fixture(scope="module")
def timelines(ml100k_processed) -> Timelines:
    return Timelines.load(ml100k_processed)


def test_one_finite_embedding_per_user(stage_dir, embeddings, timelines):
    encoder = load_encoder(stage_dir / "pretrain")
    assert embeddings.schema == {"user_id": pl.String, "n_events": pl.Int32, "embedding": pl.List(pl.Float32)}
    assert embeddings.height == 943 and embeddings["user_id"].n_unique() == 943
    assert set(embeddings["user_id"]) == set(timelines.users["user_id"])
    vectors = np.stack(embeddings["embedding"].to_numpy())
    assert vectors.shape == (943, encoder.config.dim) and np.isfinite(vectors).all()
    assert np.unique(vectors, axis=0).shape[0] == 943  # every user gets their own vector
    expected = np.minimum(np.diff(timelines.offsets), HISTORY_LEN)
    assert embeddings["n_events"].to_list() == expected.tolist()
    assert "wrote 943 users x 16 dims" in (stage_dir / "embed.log").read_text()
    assert sorted(p.name for p in (stage_dir / "embed").iterdir()) == ["full.parquet", "user_embeddings.parquet"]


def test_full_sequence_ends_in_the_embedding(stage_dir, embeddings):
    full = pl.read_parquet(stage_dir / "embed" / "full.parquet")
    assert full.schema["sequence"] == pl.List(pl.List(pl.Float32))
    assert full.select("user_id", "n_events").equals(embeddings.select("user_id", "n_events"))
    assert full["sequence"].list.len().to_list() == full["n_events"].to_list()
    for row in full.head(20).iter_rows(named=True):
        np.testing.assert_allclose(row["sequence"][-1], row["embedding"], atol=1e-5)
    # Another batch size, same vectors: padding never leaks into a user's embedding.
    np.testing.assert_allclose(np.stack(full["embedding"].to_numpy()), np.stack(embeddings["embedding"].to_numpy()),
                               atol=1e-5)


def test_embedding_reads_the_latest_window_including_the_last_event(stage_dir, embeddings, timelines):
    encoder = load_encoder(stage_dir / "pretrain").eval()
    for user in (0, int(np.argmin(np.diff(timelines.offsets)))):  # a long and the shortest timeline
        stop = int(timelines.offsets[user + 1])
        start = max(int(timelines.offsets[user]), stop - HISTORY_LEN)
        features = {f: torch.tensor(timelines.window(f, start, stop))[None] for f in encoder.config.features}
        with torch.inference_mode():
            hidden = encoder(features, torch.ones(1, stop - start, dtype=torch.bool))
        np.testing.assert_allclose(embeddings["embedding"][user].to_numpy(), hidden[0, -1].numpy(), atol=1e-5)


def test_incompatible_encoder_fails_before_any_work(monkeypatch, timelines):
    monkeypatch.syspath_prepend(str(REPO / "pipelines"))
    embed = importlib.import_module("embed")
    config = {"vocab_sizes": timelines.meta["vocab_sizes"], "features": ["item", "rating"], "dim": 8, "layers": 1,
              "heads": 2, "max_len": HISTORY_LEN}
    embed.check_compatible(UserEncoder(EncoderConfig(**config)), timelines, HISTORY_LEN)
    with pytest.raises(ValueError, match="data.history_len=100 exceeds the encoder's max_len=50"):
        embed.check_compatible(UserEncoder(EncoderConfig(**config)), timelines, 100)
    retrained = {**config, "vocab_sizes": {**config["vocab_sizes"], "item": 99}}
    with pytest.raises(ValueError, match=r"vocabularies of sizes \{'item': 99, 'rating': 7\}.*rerun `make pretrain`"):
        embed.check_compatible(UserEncoder(EncoderConfig(**retrained)), timelines, HISTORY_LEN)
