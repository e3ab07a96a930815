"""Stage 1 as a LightningModule: the user encoder learns to predict every feature of the next event.

Training: from each position of a window, a softmax cross-entropy per feature of the next event,
summed with per-feature weights. Evaluation: the held-out event of every user is ranked against the
whole catalogue (full ranking, never sampled negatives), with a popularity baseline scored on the
same examples so every number has its reference beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor

from userllm.data.timelines import PAD
from userllm.encoder.heads import NextEventHeads
from userllm.encoder.model import EncoderConfig, UserEncoder
from userllm.metrics import RankingAccumulator, popularity_scores
from userllm.modules.optim import adamw_with_schedule, decay_groups


class EncoderPretraining(L.LightningModule):
    """Next-event pretraining of `UserEncoder`, with full-ranking evaluation of the next item.

    popularity: training-event count per item id, for the popularity baseline (a buffer, not saved
    as a hyperparameter); zeros disable nothing, they only make that baseline meaningless.
    """

    def __init__(
        self,
        encoder: dict,
        loss_weights: dict[str, float],
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: Sequence[float] = (0.9, 0.98),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        sampled_negatives: int = 0,
        tie_item_head: bool = True,
        exclude_seen: bool = True,
        ks: Sequence[int] = (1, 5, 10, 20),
        seed: int = 0,
        popularity: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["popularity"], logger=False)  # loggers get the full Hydra config
        self.config = EncoderConfig(**encoder)
        unknown = set(loss_weights) - set(self.config.features)
        if unknown:
            raise ValueError(
                f"loss.weights names features {sorted(unknown)} that the encoder does not read "
                f"(encoder features: {self.config.features})"
            )
        self.encoder = UserEncoder(self.config)
        tie_to = {"item": self.encoder.embeddings["item"]} if tie_item_head else None
        self.heads = NextEventHeads(self.config, tie_to=tie_to)
        vocab = self.config.vocab_sizes["item"]
        self.register_buffer(
            "popularity", popularity if popularity is not None else torch.zeros(vocab), persistent=False
        )
        self.ranking: dict[str, RankingAccumulator] = {}
        self.feature_hits: dict[str, list[int]] = {}
        self._events_seen = 0
        self._epoch_start = 0.0

    # -- training ---------------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        self._events_seen = 0
        self._epoch_start = time.perf_counter()

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout randomness depends on (seed, step) only, so a run resumed from a checkpoint
        # continues exactly like the uninterrupted one (data order: see EpochShuffleSampler).
        torch.manual_seed(self.hparams.seed * 1_000_003 + self.global_step)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        hidden = self.encoder(batch["features"], batch["mask"])
        loss, per_feature = self.heads.loss(
            hidden, batch["targets"], self.hparams.loss_weights, self.hparams.sampled_negatives
        )
        size = batch["mask"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for feature, value in per_feature.items():
            self.log(f"train/loss_{feature}", value, batch_size=size)
        self._events_seen += int(batch["mask"].sum())
        return loss

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        if seconds > 0:
            self.log("train/events_per_s", self._events_seen / seconds)

    # -- evaluation -------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _reset_eval(self) -> None:
        ks = tuple(self.hparams.ks)
        self.ranking = {"model": RankingAccumulator(ks), "pop": RankingAccumulator(ks)}
        self.feature_hits = {f: [0, 0] for f in self.config.features if f != "item"}

    def _eval_step(self, batch: dict) -> None:
        """Score the example's target (the next event after the window's last real position)."""
        mask = batch["mask"]
        hidden = self.encoder(batch["features"], mask)
        last_hidden = self.encoder.last_state(hidden, mask)
        last = _last_positions(mask)
        rows = torch.arange(mask.shape[0], device=mask.device)
        targets = {f: t[rows, last] for f, t in batch["targets"].items()}
        exclude = self._exclusion_mask(batch, targets["item"].shape[0])
        item_scores = self.heads.logits(last_hidden, "item").float()
        self.ranking["model"].update(item_scores, targets["item"], exclude)
        pop = popularity_scores(self.popularity).expand_as(item_scores)
        self.ranking["pop"].update(pop, targets["item"], exclude)
        for feature, counts in self.feature_hits.items():
            logits = self.heads.logits(last_hidden, feature)
            logits[:, PAD] = -math.inf
            counts[0] += int(is_hit(logits.argmax(-1), targets[feature]).sum())
            counts[1] += len(rows)

    def _exclusion_mask(self, batch: dict, size: int) -> Tensor:
        """Items each user saw before the target, if `exclude_seen`; ranking always skips padding."""
        vocab = self.config.vocab_sizes["item"]
        exclude = torch.zeros(size, vocab, dtype=torch.bool, device=batch["mask"].device)
        if self.hparams.exclude_seen:
            exclude.scatter_(1, batch["seen"], True)
        return exclude

    def _log_eval(self, split: str) -> None:
        metrics = {f"{split}/{k}": v for k, v in self.ranking["model"].compute().items()}
        metrics.update({f"{split}/pop_{k}": v for k, v in self.ranking["pop"].compute().items()})
        for feature, (hits, total) in self.feature_hits.items():
            metrics[f"{split}/next_{feature}_accuracy"] = hits / max(total, 1)
        self.log_dict(metrics)

    # -- optimisation -----------------------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.hparams
        return adamw_with_schedule(
            decay_groups(list(self.named_parameters()), hp.weight_decay),
            hp.lr, hp.betas, hp.warmup_steps, int(self.trainer.estimated_stepping_batches), hp.min_lr_ratio,
        )


def _last_positions(mask: Tensor) -> Tensor:
    """Index of each row's last real position (works for left and right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, -1).max(dim=1).values.clamp(min=0)


def is_hit(predicted: Tensor, target: Tensor) -> Tensor:
    """[N] predicted ids against [N] targets, or [N, K] targets of a multi-valued feature (a hit
    if the prediction is any of the event's values)."""
    if target.dim() == 1:
        return predicted == target
    return (predicted[:, None] == target).any(-1)
