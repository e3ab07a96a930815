"""The user encoder: per-feature embeddings, fusion, and a causal transformer over a timeline.

Every event carries several categorical features (item, rating, category, ...). Each feature has its
own embedding table (id 0 = padding, 1 = unknown). A multi-valued feature (every genre of a movie)
comes as [B, L, K] ids and embeds to the mean of its values' vectors. The features of one event are fused into one
vector and a causal, pre-LN transformer turns the sequence into one embedding per event: these are
the *user embeddings* the LLM later reads.

Fusion (`EncoderConfig.fusion`):
- `early` (paper default): concatenate the per-feature embeddings of an event, project to `dim`,
  then one shared transformer.
- `sum`: add the per-feature embeddings (each `dim` wide), then one shared transformer.
- `late` (paper ablation): one causal transformer per feature, their outputs concatenated and
  projected to `dim` per position. There is no shared transformer after the fusion, as in the
  paper's late-fusion figure: each tower already has `layers` layers.

Padding may be on either side. Positions are counted over real events only and padded keys are
never attended, so a left-padded row gives the same outputs at its real positions as the same row
right-padded, and outputs at padding positions are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FUSIONS = ("early", "sum", "late")


@dataclass
class EncoderConfig:
    """Every size of the encoder; `dataclasses.asdict` and `EncoderConfig(**d)` round-trip it."""

    vocab_sizes: dict[str, int]  # per feature, including the reserved ids 0 (padding) and 1 (unknown)
    features: list[str]  # the features the encoder reads, in this order
    dim: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    max_len: int = 256  # longest history window (padding included) the position table covers
    fusion: str = "early"
    feature_dim: int | None = None  # per-feature embedding width for concat fusions (early, late); None = dim

    def __post_init__(self) -> None:
        # Plain containers, so a config built from Hydra/OmegaConf still saves with weights_only=True.
        self.vocab_sizes = {str(k): int(v) for k, v in self.vocab_sizes.items()}
        self.features = [str(f) for f in self.features]
        if self.fusion not in FUSIONS:
            raise ValueError(f"encoder.fusion={self.fusion!r}: must be one of {', '.join(FUSIONS)}")
        if not self.features:
            raise ValueError("encoder.features is empty: the encoder needs at least one feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"encoder.features={self.features} lists a feature twice")
        missing = [f for f in self.features if f not in self.vocab_sizes]
        if missing:
            raise ValueError(
                f"encoder.features {missing} have no vocabulary size (known: {sorted(self.vocab_sizes)})"
            )
        small = {f: self.vocab_sizes[f] for f in self.features if self.vocab_sizes[f] < 2}
        if small:
            raise ValueError(f"vocabulary sizes {small} must be at least 2 (ids 0 = padding, 1 = unknown)")
        for key in ("dim", "layers", "heads", "max_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"encoder.{key}={getattr(self, key)}: must be at least 1")
        if self.dim % self.heads:
            raise ValueError(f"encoder.dim={self.dim} is not divisible by encoder.heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"encoder.dropout={self.dropout}: must be in [0, 1)")
        if self.feature_dim is not None:
            if self.feature_dim < 1:
                raise ValueError(f"encoder.feature_dim={self.feature_dim}: must be at least 1")
            if self.fusion == "sum" and self.feature_dim != self.dim:
                raise ValueError(
                    f"encoder.feature_dim={self.feature_dim} with fusion=sum: summed embeddings are "
                    f"dim={self.dim} wide; leave feature_dim unset"
                )
            if self.fusion == "late" and self.feature_dim % self.heads:
                raise ValueError(
                    f"encoder.feature_dim={self.feature_dim} is not divisible by encoder.heads="
                    f"{self.heads} (with fusion=late each feature has its own transformer that wide)"
                )

    @property
    def embedding_dim(self) -> int:
        """Width of each feature's embedding table."""
        if self.fusion == "sum" or self.feature_dim is None:
            return self.dim
        return self.feature_dim


def init_weights(module: nn.Module) -> None:
    """GPT-2 style init: small normal weights keep logits of tied heads sane at the start."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


class Attention(nn.Module):
    """Multi-head attention of queries `x` over `context` (self-attention when context is x).

    `allowed` is a boolean [B, Lq, Lk] mask, True where a query may attend a key. The caller must
    leave every query at least one allowed key: a fully masked row would make softmax NaN.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, Lq, D = x.shape
        q = self._split_heads(self.query(x))
        k, v = (self._split_heads(t) for t in self.key_value(context).chunk(2, dim=-1))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(B, Lq, D))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, L, D] -> [B, heads, L, D / heads]."""
        B, L, D = t.shape
        return t.view(B, L, self.heads, D // self.heads).transpose(1, 2)


class MLP(nn.Module):
    """The position-wise feed-forward layer (4x expansion, GELU)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """One pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = self.ln_attn(x)
        x = x + self.drop(self.attn(h, h, allowed))
        return x + self.mlp(self.ln_mlp(x))


class Transformer(nn.Module):
    """A stack of blocks plus the final LayerNorm that pre-LN stacks need."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_out(x)


def causal_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] event mask -> [B, L, L] boolean attention mask: causal AND key is a real event.

    Every query may also attend itself. For real events that changes nothing (they already see
    themselves); for padding queries, which may see no real key at all (leading padding, empty
    rows), it keeps softmax away from an all -inf row, so no NaN reaches outputs or gradients.
    Padding keys are visible only to themselves, so real events never read them.
    """
    L = mask.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=mask.device)
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()
    return (causal & mask[:, None, :]) | eye


class UserEncoder(nn.Module):
    """Timeline of events -> one user embedding per event (see the module docstring)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        width = config.embedding_dim
        self.embeddings = nn.ModuleDict(
            {f: nn.Embedding(config.vocab_sizes[f], width, padding_idx=0) for f in config.features}
        )
        self.drop = nn.Dropout(config.dropout)
        n = len(config.features)
        if config.fusion == "late":
            self.positions = nn.Embedding(config.max_len, width)
            self.towers = nn.ModuleDict(
                {f: Transformer(width, config.layers, config.heads, config.dropout) for f in config.features}
            )
            self.fuse = nn.Linear(n * width, config.dim)
        else:
            self.positions = nn.Embedding(config.max_len, config.dim)
            self.fuse = nn.Linear(n * width, config.dim) if config.fusion == "early" else None
            self.transformer = Transformer(config.dim, config.layers, config.heads, config.dropout)
        self.apply(init_weights)

    def forward(self, features: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """features: name -> LongTensor[B, L] (or [B, L, K] multi-valued) of ids; mask: BoolTensor[B, L],
        True at real events.

        Returns FloatTensor[B, L, dim]: the user embedding of each event (zero at padding).
        """
        mask = mask.bool()
        self._check(features, mask)
        positions = self.positions((mask.long().cumsum(1) - 1).clamp(min=0))
        allowed = causal_mask(mask)
        embedded = {f: self._embed(f, features[f]) for f in self.config.features}
        if self.config.fusion == "late":
            towers = [self.towers[f](self.drop(e + positions), allowed) for f, e in embedded.items()]
            x = self.fuse(torch.cat(towers, dim=-1))
        else:
            if self.config.fusion == "early":
                x = self.fuse(torch.cat(list(embedded.values()), dim=-1))
            else:
                x = torch.stack(list(embedded.values())).sum(0)
            x = self.transformer(self.drop(x + positions), allowed)
        return x.masked_fill(~mask[..., None], 0.0)

    def _embed(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L, width]; a multi-valued feature's [B, L, K] ids are averaged over
        the event's values (padding id 0 embeds to zero and is not counted)."""
        vectors = self.embeddings[feature](ids)
        if ids.dim() == 2:
            return vectors
        count = (ids != 0).sum(-1, keepdim=True).clamp(min=1).to(vectors.dtype)
        return vectors.sum(-2) / count

    def _check(self, features: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """Fail with a message that names the problem instead of an opaque indexing error."""
        missing = [f for f in self.config.features if f not in features]
        if missing:
            raise KeyError(f"encoder input lacks features {missing} (got {sorted(features)})")
        if mask.dim() != 2:
            raise ValueError(f"mask must be [batch, length], got shape {tuple(mask.shape)}")
        for f in self.config.features:
            if features[f].shape[:2] != mask.shape or features[f].dim() > 3:
                raise ValueError(
                    f"feature {f!r} has shape {tuple(features[f].shape)}: expected the mask's "
                    f"{tuple(mask.shape)}, plus one trailing dimension for a multi-valued feature"
                )
        if mask.shape[1] > self.config.max_len:  # the shape, not the event count: no device sync
            raise ValueError(f"history length {mask.shape[1]} exceeds encoder.max_len={self.config.max_len}")

    @staticmethod
    def last_state(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, L, dim] user embeddings -> [B, dim] at each row's last real event (zero if none).

        Works for left and right padding: the last real event is the highest masked index.
        """
        index = (torch.arange(mask.shape[1], device=mask.device) * mask.bool()).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
