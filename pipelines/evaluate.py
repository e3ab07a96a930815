"""Stage 2's test on its own: `python pipelines/evaluate.py [overrides]` / `make evaluate`.

Rebuilds the model finetune trained from the same config (conf/evaluate.yaml composes
conf/finetune.yaml, so finetune's overrides work here unchanged), loads finetune's checkpoint,
which holds only the trainable parameters, and tests it exactly as finetune's own test does: the
same metrics and baselines, written to `${result_dir}` (`outputs/<dataset>/evaluate/<task>/<integration>/`).
Testing apart from training lets one trained model be scored on more users (`max_eval_users`),
from another checkpoint (`ckpt=best`), or again, without retraining.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from common import build_trainer, log, set_threads
from stage2 import build_stage2, run_test


def finetune_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint `ckpt` names: finetune's `last` or `best`, or a path; None where finetune left none."""
    if cfg.ckpt not in ("last", "best"):
        path = Path(cfg.ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"ckpt={cfg.ckpt}: no such checkpoint file")
        return path
    last = Path(cfg.checkpoint_dir) / "last.ckpt"
    if not last.exists():
        return None
    return last if cfg.ckpt == "last" else best_checkpoint(last)


def best_checkpoint(last: Path) -> Path:
    """The best checkpoint as finetune's ModelCheckpoint recorded it in last.ckpt.

    Only a finetune run that monitored a metric kept one; the default keeps last.ckpt alone.
    """
    callbacks = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("callbacks", {})
    recorded = (state.get("best_model_path") for name, state in callbacks.items() if name.startswith("ModelCheckpoint"))
    best = next((path for path in recorded if path), "")
    if not best:
        raise FileNotFoundError(
            f"ckpt=best: the finetune run in {last.parent} kept no best checkpoint (it monitored no metric). Use "
            "ckpt=last, or finetune with callbacks.model_checkpoint.monitor=val/loss "
            "callbacks.model_checkpoint.save_top_k=1"
        )
    path = last.parent / Path(best).name  # where it is now, should the folder have moved
    if not path.is_file():
        raise FileNotFoundError(f"ckpt=best: {path}, the best checkpoint recorded in {last}, does not exist")
    return path


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    if cfg.ckpt_path or cfg.resume:
        raise ValueError("evaluate does not train: choose the checkpoint with ckpt=last|best|<path>, "
                         "not ckpt_path/resume")
    set_threads(cfg.threads)
    checkpoint = finetune_checkpoint(cfg)
    model, datamodule = build_stage2(cfg)
    if checkpoint is not None:
        step = model.load_trainable(checkpoint)
        log.info("loaded the trainable parameters of %s (step %d)", checkpoint, step)
    elif model.num_trainable() > 0:
        raise FileNotFoundError(
            f"no finetune checkpoint: {Path(cfg.checkpoint_dir) / 'last.ckpt'} does not exist. Run finetune first with "
            "the same overrides (`make finetune`), point finetune_dir= at the folder it wrote, or pass ckpt=<path>"
        )
    else:
        log.info("nothing trainable (frozen LLM, no encoder) and no checkpoint: testing the model as it is")
    return run_test(cfg, build_trainer(cfg), model, datamodule)


if __name__ == "__main__":
    main()
