"""What every entry point does the same way: find the repo, read the data config, report results."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("USERLLM_ROOT", str(REPO_ROOT))
os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; `wandb sync` later

from userllm.data.prepare import DatasetSpec, prepare_dataset  # noqa: E402
from userllm.io import write_json  # noqa: E402

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("userllm")


def dataset_spec(cfg: DictConfig) -> DatasetSpec:
    """The data config group as the library's plain dataclass."""
    data = cfg.data
    return DatasetSpec(
        name=data.name,
        reader=data.reader,
        raw_dir=Path(data.raw_dir),
        processed_dir=Path(cfg.paths.processed_dir),
        reader_options=OmegaConf.to_container(data.reader_options, resolve=True),
        min_events=data.min_events,
        strict=data.strict,
        max_bad_fraction=data.max_bad_fraction,
        fetch=data.fetch,
    )


def ensure_data(cfg: DictConfig) -> Path:
    """Prepare the dataset if its artifacts are missing or stale; return the processed folder."""
    return prepare_dataset(dataset_spec(cfg), force=bool(cfg.get("force", False)))


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads: oversubscribing 2 cores makes every step several times slower."""
    if threads:
        import torch  # here, not at the top: `make data` should not pay for importing torch

        torch.set_num_threads(int(threads))


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last` or `resume=true` resume from the stage's last.ckpt; a fresh run clears it."""
    checkpoint_dir = Path(cfg.checkpoint_dir)
    if cfg.get("resume") or cfg.get("ckpt_path") == "last":
        last = checkpoint_dir / "last.ckpt"
        if not last.exists():
            raise FileNotFoundError(f"cannot resume: {last} does not exist (no earlier run to continue)")
        log.info("resuming from %s", last)
        return str(last)
    if cfg.get("ckpt_path"):
        return str(cfg.ckpt_path)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return None


def build_trainer(cfg: DictConfig) -> "L.Trainer":
    """The Lightning Trainer with the configured callbacks and loggers (W&B gets the full config)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    if not loggers:  # nothing to report learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def finish_stage(cfg: DictConfig, metrics: dict[str, float], stage_dir: Path, table_prefixes: tuple[str, ...]) -> None:
    """Write metrics.json to the run folder and the stable stage folder, and print the results table."""
    metrics = dict(sorted(metrics.items()))
    write_json(Path(cfg.run_dir) / "metrics.json", metrics)
    write_json(stage_dir / "metrics.json", metrics)
    rows = [(k, v) for k, v in metrics.items() if k.startswith(table_prefixes)]
    table = Table(title=f"{cfg.stage} on {cfg.data.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, f"{value:.4f}")
    Console().print(table)
    log.info("metrics written to %s and %s", Path(cfg.run_dir) / "metrics.json", stage_dir / "metrics.json")
