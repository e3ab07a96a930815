"""Next-event prediction heads: the stage-1 self-supervised objective.

From the user embedding at position t the heads predict every feature of event t + 1 with a softmax
cross-entropy per feature, summed over features with configurable weights. Full softmax is the
default; sampled softmax is an option for catalogues too large to score in full at every position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from userllm.encoder.model import EncoderConfig, init_weights


class NextEventHeads(nn.Module):
    """One linear output layer per feature, `dim` -> that feature's vocabulary.

    `tie_to` maps features to input embedding tables whose weights the output layer shares (e.g.
    `{"item": encoder.embeddings["item"]}`): for large item catalogues this halves the parameters
    and lets rare items borrow what their input embedding learned. The table must be `dim` wide.
    """

    def __init__(self, config: EncoderConfig, tie_to: dict[str, nn.Embedding] | None = None) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(
            {f: nn.Linear(config.dim, config.vocab_sizes[f]) for f in config.features}
        )
        self.apply(init_weights)
        for feature, embedding in (tie_to or {}).items():
            if feature not in self.heads:
                raise ValueError(f"cannot tie {feature!r}: not an encoder feature ({config.features})")
            if embedding.weight.shape != self.heads[feature].weight.shape:
                raise ValueError(
                    f"cannot tie {feature!r}: embedding is {tuple(embedding.weight.shape)}, the head "
                    f"needs {tuple(self.heads[feature].weight.shape)} (set feature_dim to dim or fusion=sum)"
                )
            self.heads[feature].weight = embedding.weight

    def logits(self, hidden: torch.Tensor, feature: str) -> torch.Tensor:
        """[..., dim] -> [..., vocab] scores of every id of `feature`."""
        return self.heads[feature](hidden)

    def loss(
        self,
        hidden: torch.Tensor,
        targets: dict[str, torch.Tensor],
        weights: dict[str, float] | None = None,
        sampled_negatives: int = 0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum over features of the mean cross-entropy at positions whose target != 0.

        hidden: [B, L, dim]; targets: feature -> LongTensor[B, L] of next-event ids (0 = ignore), or
        [B, L, K] for a multi-valued feature, whose target distribution is uniform over the event's
        values (full softmax only: such vocabularies are small).
        Only features present in `targets` count; a feature missing from `weights` weighs 1.
        With `sampled_negatives > 0`, features whose vocabulary is larger than that use sampled
        softmax. Returns (total, {feature: unweighted loss}).
        """
        weights = weights or {}
        unknown = set(weights) - set(self.heads)
        if unknown:
            raise ValueError(f"loss weights for unknown features {sorted(unknown)} (known: {list(self.heads)})")
        total = hidden.new_zeros(())
        per_feature = {}
        for feature, target in targets.items():
            keep = target != 0 if target.dim() == 2 else (target != 0).any(-1)
            h, t = hidden[keep], target[keep]  # score only where a loss is taken
            vocab = self.heads[feature].out_features
            if t.dim() == 2:
                logits, t = self.logits(h, feature).float(), values_distribution(t, vocab)
            elif 0 < sampled_negatives < vocab:
                logits, t = self._sampled_logits(feature, h, t, sampled_negatives)
            else:
                logits = self.logits(h, feature)
            # Sum / count instead of mean: a batch with no target left is a zero loss, not NaN.
            ce = F.cross_entropy(logits, t, reduction="sum") / max(len(t), 1)
            per_feature[feature] = ce
            total = total + weights.get(feature, 1.0) * ce
        return total, per_feature

    def _sampled_logits(
        self, feature: str, h: torch.Tensor, target: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over [target, n shared negatives] per row; the new target is column 0.

        Negatives are drawn uniformly with replacement from ids 1..V-1 (never padding), shared by
        the whole batch so one [N, dim] x [dim, n] product scores them. Every logit is corrected by
        -log(expected count of its id among the samples) (logQ), which makes the sampled softmax a
        consistent estimate of the full one; negatives that hit the row's own target are masked.
        Under the uniform proposal the correction is one constant and cancels in the softmax; it is
        written out so that a popularity-based proposal only has to change `log_q`.
        """
        head = self.heads[feature]
        vocab = head.out_features
        negatives = torch.randint(1, vocab, (n,), device=h.device)
        log_q = math.log(n / (vocab - 1))  # expected count of any one id among n uniform draws
        true = (h * head.weight[target]).sum(-1) + head.bias[target]
        sampled = h @ head.weight[negatives].T + head.bias[negatives]
        sampled = sampled.masked_fill(negatives[None, :] == target[:, None], float("-inf"))
        logits = torch.cat([true[:, None], sampled], dim=1) - log_q
        return logits, torch.zeros_like(target)


def values_distribution(values: torch.Tensor, vocab: int) -> torch.Tensor:
    """[N, K] ids (0 = none) -> [N, vocab] probabilities, uniform over each row's values."""
    counts = torch.zeros(values.shape[0], vocab, device=values.device)
    counts.scatter_add_(1, values, (values != 0).float())
    return counts / counts.sum(-1, keepdim=True).clamp(min=1)
