"""Every user's embedding as parquet: `python pipelines/embed.py [overrides]` / `make embed`.

Load the encoder that pretrain exported, run it over each user's most recent `data.history_len`
events and write one row per user to `${out_file}`: `user_id`, `n_events` (how many events the
encoder read), `embedding` (the user embedding at the last of them) and, with
`embed.full_sequence=true`, `sequence` (one vector per event read, oldest first). The window ends
with the user's last event, the one pretraining held out for testing: the embedding describes the
user as of the end of the log, which is what a consumer outside the project wants.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import polars as pl
import torch
from omegaconf import DictConfig

from common import build_loggers, ensure_data, log, log_artifact, set_threads
from userllm.data.collate import pad_rows
from userllm.data.timelines import Timelines
from userllm.encoder.export import load_encoder
from userllm.encoder.model import UserEncoder
from userllm.io import atomic_path


def latest_windows(timelines: Timelines, history_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop event indices of each user's most recent `history_len` events, last included."""
    stops = timelines.offsets[1:]
    return np.maximum(timelines.offsets[:-1], stops - history_len), stops


def check_compatible(encoder: UserEncoder, timelines: Timelines, history_len: int) -> None:
    """Fail before any work if the ids or the window do not fit the encoder.

    Ids are only meaningful to the encoder if the vocabularies are those it was trained on; a data
    folder rebuilt since pretraining would be read silently wrong.
    """
    config = encoder.config
    trained = {f: config.vocab_sizes[f] for f in config.features}
    found = {f: timelines.vocab_size(f) for f in config.features}
    if trained != found:
        raise ValueError(
            f"the encoder was trained on vocabularies of sizes {trained}, {timelines.folder} has {found}: "
            "rerun `make pretrain` on these timelines"
        )
    if history_len > config.max_len:
        raise ValueError(f"data.history_len={history_len} exceeds the encoder's max_len={config.max_len}")


@torch.inference_mode()
def encode(
    encoder: UserEncoder, timelines: Timelines, starts: np.ndarray, stops: np.ndarray, batch_size: int,
    device: str, full_sequence: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """[users, dim] embeddings at each window's last event; with `full_sequence` also the vectors of
    every event read, [sum of window lengths, dim], user after user."""
    last, every = [], []
    for begin in range(0, len(starts), batch_size):
        windows = list(zip(starts[begin : begin + batch_size], stops[begin : begin + batch_size]))
        features = {
            f: pad_rows([timelines.window(f, a, b) for a, b in windows]).to(device) for f in encoder.config.features
        }
        lengths = torch.tensor([b - a for a, b in windows], device=device)
        mask = torch.arange(int(lengths.max()), device=device) < lengths[:, None]
        hidden = encoder(features, mask)
        last.append(UserEncoder.last_state(hidden, mask).float().cpu())
        if full_sequence:
            every.append(hidden[mask].float().cpu())
    return torch.cat(last).numpy(), torch.cat(every).numpy() if full_sequence else None


def embeddings_frame(
    user_ids: pl.Series, lengths: np.ndarray, last: np.ndarray, every: np.ndarray | None
) -> pl.DataFrame:
    """One row per user; vectors as plain float lists, which every parquet reader understands."""
    frame = pl.DataFrame({
        "user_id": user_ids.cast(pl.String),
        "n_events": pl.Series(lengths, dtype=pl.Int32),
        "embedding": pl.Series(last).cast(pl.List(pl.Float32)),
    })
    if every is None:
        return frame
    rows = pl.DataFrame({"row": np.repeat(np.arange(len(lengths)), lengths), "vector": pl.Series(every)})
    sequences = rows.group_by("row", maintain_order=True).agg(pl.col("vector").cast(pl.List(pl.Float32)))
    return frame.with_columns(sequence=sequences["vector"])


@hydra.main(config_path="../conf", config_name="embed", version_base="1.3")
def main(cfg: DictConfig) -> None:
    set_threads(cfg.threads)
    loggers = build_loggers(cfg)
    timelines = Timelines.load(ensure_data(cfg))
    encoder = load_encoder(Path(cfg.encoder_dir)).to(cfg.embed.device).eval()
    check_compatible(encoder, timelines, cfg.data.history_len)
    starts, stops = latest_windows(timelines, cfg.data.history_len)
    last, every = encode(encoder, timelines, starts, stops, cfg.embed.batch_size, cfg.embed.device,
                         cfg.embed.full_sequence)
    frame = embeddings_frame(timelines.users["user_id"], stops - starts, last, every)
    out_file = Path(cfg.out_file)
    with atomic_path(out_file) as tmp:
        frame.write_parquet(tmp)
    log.info("wrote %d users x %d dims (columns %s) to %s", *last.shape, ", ".join(frame.columns), out_file)
    log_artifact(loggers, f"user_embeddings-{cfg.data.name}", "embeddings", [out_file])


if __name__ == "__main__":
    main()
