"""Stage 1: pretrain the user encoder. `python pipelines/pretrain.py [overrides]` / `make pretrain`.

Build data, build model, train, test on the held-out last event of every user, export the encoder
to `${result_dir}` (`${paths.stage_dir}/pretrain/`, where the finetune stage finds it; in a
multirun, each job's own folder).
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from common import (
    build_trainer,
    encoder_config,
    ensure_data,
    finish_stage,
    log,
    log_artifact,
    resolve_ckpt_path,
    set_threads,
)
from userllm.data.collate import EncoderCollator
from userllm.data.datamodule import TimelineDataModule
from userllm.encoder.export import CONFIG, WEIGHTS, save_encoder
from userllm.modules.pretrain import EncoderPretraining


def build_datamodule(cfg: DictConfig, processed_dir: Path) -> TimelineDataModule:
    datamodule = TimelineDataModule(
        processed_dir,
        collator_factory=partial(EncoderCollator, padding_side=cfg.padding_side),
        history_len=cfg.data.history_len,
        stride=cfg.data.stride,
        features=list(cfg.encoder.features),
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
    )
    datamodule.setup()
    return datamodule


def build_model(cfg: DictConfig, datamodule: TimelineDataModule) -> EncoderPretraining:
    timelines = datamodule.timelines
    features = list(cfg.encoder.features)
    return EncoderPretraining(
        encoder=asdict(encoder_config(cfg, timelines)),
        loss_weights={f: w for f, w in cfg.loss.weights.items() if f in features},
        sampled_negatives=cfg.loss.sampled_negatives,
        tie_item_head=cfg.loss.tie_item_head,
        exclude_seen=cfg.eval.exclude_seen,
        ks=list(cfg.eval.ks),
        seed=cfg.seed,
        popularity=torch.as_tensor(timelines.training_item_counts(), dtype=torch.float32),
        **OmegaConf.to_container(cfg.optim, resolve=True),
    )


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> float:
    set_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg, ensure_data(cfg))
    model = build_model(cfg, datamodule)
    ckpt_path = resolve_ckpt_path(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(model, datamodule, ckpt_path=ckpt_path)
    throughput = float(trainer.callback_metrics.get("train/events_per_s", float("nan")))
    # Validation and test both score the best checkpoint, so val/* and test/* describe one model.
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics = trainer.validate(model, datamodule, ckpt_path=best or None, weights_only=True)[0]
    metrics |= trainer.test(model, datamodule, ckpt_path=best or None, weights_only=True)[0]
    metrics["train/events_per_s"] = throughput
    stage_dir = Path(cfg.result_dir)
    save_encoder(model.encoder, stage_dir)
    log.info("encoder written to %s", stage_dir)
    log_artifact(trainer.loggers, f"encoder-{cfg.data.name}", "model", [stage_dir / WEIGHTS, stage_dir / CONFIG])
    finish_stage(cfg, metrics, stage_dir, table_prefixes=("test/", "train/events_per_s"))
    return metrics.get(cfg.optimized_metric, float("nan"))


if __name__ == "__main__":
    main()
