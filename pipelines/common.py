"""What every entry point does the same way: find the repo, resolve paths, read data, log, report."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
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

    from userllm.data.timelines import Timelines
    from userllm.encoder.model import EncoderConfig
    from hydra.core.utils import JobReturn
    from lightning.pytorch.loggers import Logger

log = logging.getLogger("userllm")


def job_dir_if_multirun(stable_dir: str) -> str:
    """`${job_dir_if_multirun:<stable dir>}`: that path in a single run, the job's folder in a multirun.

    A stage's result folder is a stable path that the next stage reads. Every job of a sweep
    writing there would overwrite the others' checkpoints and results, so each job of a multirun
    keeps them in its own folder, beside its metrics.json, where pipelines/collect.py finds them.
    """
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().runtime.output_dir
    return stable_dir


def first_nonempty(*values: Any) -> Any:
    """`${first_nonempty:a,b}`: `a` unless it is null or empty, else `b` (e.g. a W&B run named by its
    overrides, or by its stage when there are none)."""
    return next((value for value in values if value not in (None, "")), None)


# Registered on import: every entry point imports this module before Hydra composes its config.
OmegaConf.register_new_resolver("job_dir_if_multirun", job_dir_if_multirun, replace=True)
OmegaConf.register_new_resolver("first_nonempty", first_nonempty, replace=True)


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


def encoder_config(cfg: DictConfig, timelines: "Timelines", max_len: int | None = None) -> "EncoderConfig":
    """The `encoder` config group as the library's EncoderConfig, sized to the prepared vocabularies."""
    from userllm.encoder.model import EncoderConfig

    features = list(cfg.encoder.features)
    return EncoderConfig(
        vocab_sizes={f: timelines.vocab_size(f) for f in features}, features=features, dim=cfg.encoder.dim,
        layers=cfg.encoder.layers, heads=cfg.encoder.heads, dropout=cfg.encoder.dropout,
        max_len=max_len or cfg.encoder.max_len, fusion=cfg.encoder.fusion, feature_dim=cfg.encoder.feature_dim,
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


def build_loggers(cfg: DictConfig) -> list["Logger"]:
    """The configured loggers, each given the full resolved config (W&B shows it as the run's config)."""
    from hydra.utils import instantiate

    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def build_trainer(cfg: DictConfig) -> "L.Trainer":
    """The Lightning Trainer with the configured callbacks and loggers."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    loggers = build_loggers(cfg)
    if not loggers:  # nothing to report learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def log_artifact(loggers: Iterable["Logger"], name: str, kind: str, files: Sequence[Path]) -> None:
    """Upload `files` as one W&B artifact when a WandbLogger was asked to log models (`log_model`).

    Lightning's `log_model` uploads only its training checkpoints; what a user of the results
    needs is what the stages export: the encoder (weights + config) and the user embeddings.
    """
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._log_model:  # Lightning keeps the flag private
            import wandb

            artifact = wandb.Artifact(name, type=kind)
            for path in files:
                artifact.add_file(str(path))
            logger.experiment.log_artifact(artifact)
            log.info("logged %s as W&B artifact %s (%s)", ", ".join(p.name for p in files), name, kind)


class FinishWandbRun(Callback):
    """Hydra callback: close the W&B run when a job ends (`hydra.callbacks` in conf/hydra/default.yaml).

    Lightning's WandbLogger never does: the next job of a multirun, which runs in the same process,
    would log into the previous job's run, and an offline run would lack its exit record.
    """

    def on_job_end(self, config: DictConfig, job_return: "JobReturn", **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        wandb = sys.modules.get("wandb")  # not imported: no logger used it, nothing to close
        if wandb is not None and wandb.run is not None:
            wandb.finish(exit_code=0 if job_return.status == JobStatus.COMPLETED else 1)


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
