"""Stage 2: contextualise the LLM with user embeddings. `python pipelines/finetune.py` / `make finetune`.

Build data and task, load the LLM and the stage-1 encoder, train the chosen strategy, and (unless
`test_after_fit=false`, which leaves it to the evaluate stage) test on every user's held-out window
and print the result beside the trivial baseline and the text-prompt one.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from common import build_trainer, finish_stage, log, resolve_ckpt_path, set_threads
from stage2 import build_stage2, run_test


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig) -> float:
    set_threads(cfg.threads)
    model, datamodule = build_stage2(cfg)
    trainer = build_trainer(cfg)
    if model.num_trainable() > 0:
        trainer.fit(model, datamodule, ckpt_path=resolve_ckpt_path(cfg))
        save_final_checkpoint(trainer)
    else:
        log.info("nothing to train (frozen LLM, no encoder): the model is tested as it is")
    if cfg.test_after_fit:
        return run_test(cfg, trainer, model, datamodule)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    finish_stage(cfg, metrics, Path(cfg.result_dir), table_prefixes=("train/", "val/"))
    log.info("not tested (test_after_fit=false): `python pipelines/evaluate.py` with the same overrides tests it")
    return float("nan")


def save_final_checkpoint(trainer: L.Trainer) -> None:
    """Write last.ckpt again, at the step training ended on.

    Lightning writes last.ckpt when it validates (and at the end only if it never did), so a run
    that stops between validations (the `max_time` budget, a step budget that is no multiple of
    `val_check_interval`) leaves a last.ckpt older than the model it trained and then tested.
    The evaluate stage reads last.ckpt: it has to be the model finetune ended with.
    """
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
        last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        trainer.save_checkpoint(last, weights_only=callback.save_weights_only)


if __name__ == "__main__":
    main()
