"""Perceiver resampler: any number of event embeddings -> a fixed, small number of user tokens.

M learned latent queries cross-attend to the N event embeddings, so what the LLM reads (and pays
for) no longer grows with the history length. As in Flamingo, the latents attend to the events and
to themselves: every latent then always has a valid key, so a row of pure padding yields finite
outputs (a function of the latents alone) instead of a NaN softmax.
"""

from __future__ import annotations

import torch
from torch import nn

from userllm.encoder.model import MLP, Attention, init_weights


class PerceiverLayer(nn.Module):
    """Pre-LN cross-attention from latents to [events, latents], then a feed-forward; both residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_latents = nn.LayerNorm(dim)
        self.ln_events = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dropout)

    def forward(self, latents: torch.Tensor, events: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        q = self.ln_latents(latents)
        context = torch.cat([self.ln_events(events), q], dim=1)
        latents = latents + self.drop(self.attn(q, context, allowed))
        return latents + self.mlp(self.ln_mlp(latents))


class PerceiverResampler(nn.Module):
    """events [B, N, dim_in] + mask [B, N] -> [B, num_latents, dim], whatever N is."""

    def __init__(
        self,
        dim_in: int,
        dim: int,
        num_latents: int = 16,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"perceiver dim={dim} is not divisible by heads={heads}")
        if num_latents < 1 or layers < 1:
            raise ValueError(f"perceiver needs num_latents >= 1 and layers >= 1, got {num_latents}, {layers}")
        self.project = nn.Linear(dim_in, dim)
        self.latents = nn.Parameter(torch.empty(num_latents, dim))
        self.layers = nn.ModuleList(PerceiverLayer(dim, heads, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)
        self.apply(init_weights)
        nn.init.normal_(self.latents, std=0.02)

    def forward(self, events: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, _ = events.shape
        M = self.latents.shape[0]
        keys_real = torch.cat([mask.bool(), mask.new_ones(B, M, dtype=torch.bool)], dim=1)
        allowed = keys_real[:, None, :].expand(B, M, N + M)
        events = self.project(events)
        latents = self.latents.expand(B, -1, -1)
        for layer in self.layers:
            latents = layer(latents, events, allowed)
        return self.ln_out(latents)
