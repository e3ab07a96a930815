"""Evaluation metrics: full-ranking next-item metrics, ROUGE-Lsum, and accuracy.

Ranking is always over the full item vocabulary, never over sampled negatives: sampled metrics
inflate results about threefold and cannot be compared with full-ranking numbers (PAPER.md).

Rank rule: rank = 1 + the number of other, non-excluded items whose score is >= the target's.
Ties are counted pessimistically (every tied item is ranked ahead of the target), so a model that
scores many items alike, or a constant model, earns nothing from the order of a sort. Ids 0
(padding) and 1 (unknown) are never ranked. Items the user has already seen can be excluded, but
the target itself always stays in the ranking, even when it was seen before. A target of 0 or 1
cannot be ranked and counts as a miss (rank infinity), so every user stays in the denominator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

RESERVED_IDS = 2  # 0 = padding, 1 = unknown: in every vocabulary, never ranked


def exclusion_mask(
    exclude: torch.Tensor | Sequence[torch.Tensor] | None, batch: int, vocab: int, device: torch.device
) -> torch.Tensor:
    """[B, V] boolean mask of items not to rank: the reserved ids plus `exclude`.

    `exclude` is a BoolTensor[B, V], a LongTensor[B, L] of padded item ids (e.g. the history
    window; 0 is padding and excluded anyway), a list of B LongTensors of ids, or None.
    """
    if exclude is None:
        mask = torch.zeros(batch, vocab, dtype=torch.bool, device=device)
    elif isinstance(exclude, torch.Tensor) and exclude.dtype == torch.bool:
        if exclude.shape != (batch, vocab):
            raise ValueError(f"exclude mask has shape {tuple(exclude.shape)}, scores {(batch, vocab)}")
        mask = exclude.to(device, copy=True)
    else:
        ids = exclude if isinstance(exclude, torch.Tensor) else pad_sequence(list(exclude), batch_first=True)
        if len(ids) != batch:
            raise ValueError(f"exclude has {len(ids)} rows, scores {batch}")
        ids = ids.to(device).long().reshape(batch, -1)
        mask = torch.zeros(batch, vocab, dtype=torch.bool, device=device).scatter_(1, ids, True)
    mask[:, :RESERVED_IDS] = True
    return mask


def ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor | Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """Rank of each target among the non-excluded items: FloatTensor[B], 1 = best, inf = unrankable.

    scores: [B, V], or [V] shared by the whole batch (a popularity baseline); higher is better.
    """
    targets = targets.to(scores.device).long()
    if scores.dim() == 1:
        scores = scores.expand(len(targets), -1)
    B, V = scores.shape
    if targets.shape != (B,):
        raise ValueError(f"targets must be [batch]={B}, got shape {tuple(targets.shape)}")
    if bool(((targets < 0) | (targets >= V)).any()):
        raise ValueError(f"targets must be item ids in [0, {V}), got {targets.min()}..{targets.max()}")
    if bool(scores.isnan().any()):
        raise ValueError("scores contain NaN: a NaN target would otherwise rank first")
    rows = torch.arange(B, device=scores.device)
    rankable = targets >= RESERVED_IDS
    excluded = exclusion_mask(exclude, B, V, scores.device)
    excluded[rows[rankable], targets[rankable]] = False  # the target always competes
    target_scores = scores[rows, targets]
    at_or_above = ((scores >= target_scores[:, None]) & ~excluded).sum(1)  # counts the target itself
    return at_or_above.float().masked_fill(~rankable, math.inf)


def ranking_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ks: Sequence[int] = (1, 5, 10, 20),
) -> dict[str, torch.Tensor]:
    """Per-example recall@k, ndcg@k (every k in ks) and mrr, each a FloatTensor[B].

    One target per user, so recall@k equals hit rate@k and ndcg@k is 1 / log2(rank + 1) on a hit.
    """
    rank = ranks(scores, targets, exclude)
    metrics = {}
    for k in ks:
        hit = (rank <= k).float()
        metrics[f"recall@{k}"] = hit
        metrics[f"ndcg@{k}"] = hit / torch.log2(rank + 1)
    metrics["mrr"] = 1.0 / rank
    return metrics


class RankingAccumulator:
    """Sums per-example ranking metrics over batches; `compute` returns their means."""

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 20)) -> None:
        self.ks = tuple(ks)
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(
        self,
        scores: torch.Tensor,
        targets: torch.Tensor,
        exclude: torch.Tensor | Sequence[torch.Tensor] | None = None,
    ) -> None:
        for name, values in ranking_metrics(scores, targets, exclude, self.ks).items():
            self.sums[name] = self.sums.get(name, 0.0) + values.sum().item()
        self.count += len(targets)

    def compute(self) -> dict[str, float]:
        """{"recall@1", ..., "ndcg@1", ..., "mrr"}: means over every example seen."""
        if not self.count:
            raise ValueError("RankingAccumulator.compute() before any update")
        return {name: total / self.count for name, total in self.sums.items()}


def popularity_scores(item_counts: torch.Tensor) -> torch.Tensor:
    """Training-set item counts [V] -> scores [V]: the most popular items rank first.

    Pass the result as `scores` to `ranks`/`RankingAccumulator.update` (a [V] vector is shared by
    the batch), so the popularity baseline is measured exactly like the models.
    """
    if item_counts.dim() != 1:
        raise ValueError(f"item_counts must be a [vocab] vector, got shape {tuple(item_counts.shape)}")
    return item_counts.float()


def _one_sentence_per_line(text: str) -> str:
    """rougeLsum computes the summary-level LCS over newline-separated sentences; split them here.

    A regex on sentence-ending punctuation rather than nltk's punkt, which needs a download.
    """
    return re.sub(r"(?<=[.!?])\s+", "\n", text.strip())


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def rouge_lsum(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-Lsum F-measure x 100 (Porter stemming), the paper's review-generation metric."""
    from rouge_score import rouge_scorer  # here, not at the top: it imports nltk (about 1 s)

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    scores = [
        scorer.score(_one_sentence_per_line(ref), _one_sentence_per_line(pred))["rougeLsum"].fmeasure
        for pred, ref in zip(predictions, references)
    ]
    return 100.0 * sum(scores) / len(scores)


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of exact matches, ignoring case and surrounding or repeated whitespace."""
    _check_pairs(predictions, references)
    return sum(_normalise(p) == _normalise(r) for p, r in zip(predictions, references)) / len(predictions)


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()
