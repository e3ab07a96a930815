"""Flamingo-style gated cross-attention from an LLM's text stream to user tokens.

Each chosen decoder layer of a Hugging Face causal LM is wrapped in `CrossAttentionDecoderLayer`,
which first lets the incoming hidden states attend to the user tokens through a
`GatedCrossAttention` block and then calls the original layer with all of its arguments. The block
adds its output through `tanh(gate)` with the gate initialised at zero, so the wrapped LLM computes
exactly what it did before until training opens the gates.

The user tokens reach the wrappers through a shared `UserContext` that `CrossAttentionAdapter`
fills before each forward (`with adapter.conditioned_on(tokens, mask): llm(...)`). This keeps the
LLM's forward signature untouched, so `generate` (KV cache, beam search) works unchanged. The user
tokens are not part of the KV cache: every decoding step attends to them afresh, which costs M keys
per chosen layer and step.

Wrapping changes the LLM's state-dict keys of the chosen layers (`layers.2.` becomes
`layers.2.layer.`); checkpoints of the contextualised model are saved and loaded as a whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KNOWN_LAYER_PATHS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers")
"""Where common families keep their decoder stack: Llama/Qwen2/Gemma/Mistral, GPT-2, OPT, GPT-NeoX."""


class GatedCrossAttention(nn.Module):
    """Pre-LN multi-head cross-attention (plus an optional feed-forward), each added through a tanh gate.

    Queries come from the text hidden states [B, T, H]; keys and values from the user tokens
    [B, M, D] (D = `user_dim`, by default the hidden size). The user tokens get their own LayerNorm
    because the projector's output scale has nothing to do with the LLM's residual stream.
    `ffn_mult=None` (default) drops Flamingo's gated feed-forward: at 4x width it would cost more
    than a SmolLM2 decoder layer per block.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        user_dim: int | None = None,
        ffn_mult: int | None = None,
        gate_init: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        user_dim = user_dim or hidden_size
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(hidden_size)
        self.user_norm = nn.LayerNorm(user_dim)
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key_value = nn.Linear(user_dim, 2 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attn_gate = nn.Parameter(torch.tensor(float(gate_init)))
        if ffn_mult:
            self.ffn_norm = nn.LayerNorm(hidden_size)
            self.ffn = nn.Sequential(
                nn.Linear(hidden_size, ffn_mult * hidden_size),
                nn.GELU(),
                nn.Linear(ffn_mult * hidden_size, hidden_size),
            )
            self.ffn_gate = nn.Parameter(torch.tensor(float(gate_init)))
        else:
            self.ffn = None

    def forward(
        self, hidden_states: torch.Tensor, user_tokens: torch.Tensor, user_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """hidden_states [B, T, H], user_tokens [B, M, D], user_mask [B, M] (True/1 = attend) -> [B, T, H]."""
        batch, length, hidden = hidden_states.shape
        heads = self.num_heads
        query = self.query(self.norm(hidden_states)).view(batch, length, heads, -1).transpose(1, 2)
        key, value = self.key_value(self.user_norm(user_tokens)).chunk(2, dim=-1)
        key = key.view(batch, -1, heads, hidden // heads).transpose(1, 2)
        value = value.view(batch, -1, heads, hidden // heads).transpose(1, 2)

        attn_mask = None
        if user_mask is not None:
            # A row without any valid user token would turn softmax into NaN, and 0 * NaN poisons the
            # residual stream even with a closed gate: let such rows attend everywhere, then zero them.
            has_tokens = user_mask.bool().any(dim=-1)
            attn_mask = (user_mask.bool() | ~has_tokens[:, None])[:, None, None, :]
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        attended = self.out(attended.transpose(1, 2).reshape(batch, length, hidden))
        if user_mask is not None:
            attended = attended * has_tokens[:, None, None].to(attended.dtype)
        hidden_states = hidden_states + torch.tanh(self.attn_gate) * attended

        if self.ffn is not None:
            hidden_states = hidden_states + torch.tanh(self.ffn_gate) * self.ffn(self.ffn_norm(hidden_states))
        return hidden_states


@dataclass
class UserContext:
    """The user tokens of the current batch, shared by every wrapped layer of one LLM."""

    tokens: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def for_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tokens (and mask) for a hidden-state batch of `batch_size` rows.

        Beam search and `num_return_sequences` repeat every prompt k times in place
        (`repeat_interleave`), so a batch k times larger gets each user's tokens repeated k times.
        """
        if self.tokens is None:
            raise RuntimeError(
                "No user tokens set: run the LLM inside `adapter.conditioned_on(tokens, mask)` "
                "or call `adapter.set_user_tokens` first"
            )
        users = self.tokens.shape[0]
        if batch_size == users:
            return self.tokens, self.mask
        if batch_size % users:
            raise ValueError(f"Hidden-state batch {batch_size} is not a multiple of the user-token batch {users}")
        repeats = batch_size // users
        mask = None if self.mask is None else self.mask.repeat_interleave(repeats, dim=0)
        return self.tokens.repeat_interleave(repeats, dim=0), mask


class CrossAttentionDecoderLayer(nn.Module):
    """A decoder layer preceded by gated cross-attention to the user tokens.

    Arguments and return value are the original layer's, whatever its family's signature, and
    attribute lookups the wrapper cannot answer (e.g. `attention_type`, read by some model
    forwards) are passed on to the original layer.
    """

    def __init__(self, layer: nn.Module, cross_attn: GatedCrossAttention, context: UserContext) -> None:
        super().__init__()
        self.layer = layer
        self.cross_attn = cross_attn
        self.context = context

    def forward(self, *args, **kwargs):
        if "hidden_states" in kwargs:
            hidden_states = kwargs.pop("hidden_states")
        else:
            hidden_states, *args = args
        user_tokens, user_mask = self.context.for_batch(hidden_states.shape[0])
        hidden_states = self.cross_attn(hidden_states, user_tokens.to(hidden_states.dtype), user_mask)
        return self.layer(hidden_states, *args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "layer":
                raise
            return getattr(self.layer, name)


class CrossAttentionAdapter(nn.Module):
    """The gated cross-attention blocks injected into one LLM, and the switch that feeds them user tokens.

    The blocks live inside the LLM (in the wrappers), so `llm.to(...)`, `llm.parameters()` and the
    LLM's state dict include them; `adapter.blocks` holds the same modules for optimiser groups
    (e.g. a larger learning rate for `adapter.gates()`).
    """

    def __init__(self, blocks: Sequence[GatedCrossAttention], layer_ids: Sequence[int], context: UserContext) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.layer_ids = list(layer_ids)
        self.context = context

    def set_user_tokens(self, tokens: torch.Tensor | None, mask: torch.Tensor | None = None) -> None:
        """Hand user tokens [B, M, H] (and a [B, M] mask, 1 = real token) to every wrapped layer; None clears."""
        if tokens is not None and tokens.dim() != 3:
            raise ValueError(f"user tokens must be [batch, tokens, dim], got shape {tuple(tokens.shape)}")
        self.context.tokens = tokens
        self.context.mask = mask

    @contextmanager
    def conditioned_on(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> Iterator[None]:
        """Run the LLM (forward or `generate`) with these user tokens, clearing them afterwards."""
        self.set_user_tokens(tokens, mask)
        try:
            yield
        finally:
            self.set_user_tokens(None)

    def gates(self) -> list[nn.Parameter]:
        """All tanh gates, for a separate optimiser group: at the base learning rate they barely open."""
        return [param for name, param in self.blocks.named_parameters() if name.endswith("_gate")]


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder stack of a causal LM: a known attribute path, else the largest list of identical blocks."""
    for path in KNOWN_LAYER_PATHS:
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    stacks = [
        module
        for module in model.modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(block) for block in module}) == 1
    ]
    if not stacks:
        raise ValueError(f"Found no decoder layer list in {type(model).__name__}")
    return max(stacks, key=len)


def add_cross_attention(
    model: nn.Module,
    every: int = 3,
    layers: Sequence[int] | None = None,
    user_dim: int | None = None,
    num_heads: int | None = None,
    ffn_mult: int | None = None,
    gate_init: float = 0.0,
) -> CrossAttentionAdapter:
    """Wrap decoder layers of `model` (in place) with gated cross-attention to user tokens.

    `layers` lists the layer indices that get a block; without it every `every`-th layer does,
    counting like OpenFlamingo (`every=3` on 30 layers: 2, 5, ..., 29). `num_heads` defaults to the
    LLM's attention heads. The new blocks match the LLM's dtype and device.
    """
    stack = find_decoder_layers(model)
    if any(isinstance(layer, CrossAttentionDecoderLayer) for layer in stack):
        raise ValueError("This model already has cross-attention layers")
    layer_ids = sorted(set(layers)) if layers is not None else list(range(every - 1, len(stack), every))
    if not layer_ids or layer_ids[0] < 0 or layer_ids[-1] >= len(stack):
        raise ValueError(f"Cross-attention layers {layer_ids} are not within the {len(stack)} decoder layers")

    config = model.config
    hidden_size = config.hidden_size
    num_heads = num_heads or config.num_attention_heads
    reference = next(model.parameters())
    context = UserContext()
    blocks = []
    for index in layer_ids:
        block = GatedCrossAttention(hidden_size, num_heads, user_dim, ffn_mult, gate_init)
        block.to(device=reference.device, dtype=reference.dtype)
        stack[index] = CrossAttentionDecoderLayer(stack[index], block, context)
        blocks.append(block)
    return CrossAttentionAdapter(blocks, layer_ids, context)
