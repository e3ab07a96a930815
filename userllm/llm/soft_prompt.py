"""Soft prompt: projected user tokens go into the LLM's input sequence, in front of the text.

Placement: the M user tokens are inserted right before each row's first real text token, not at
column 0. A left-padded row `[pad pad t1 t2]` becomes `[pad pad u1..uM t1 t2]` and a right-padded
one `[t1 t2 pad]` becomes `[u1..uM t1 t2 pad]`. Either way the result is an ordinary padded
sequence, with padding only where it was before, so everything that handles padding already
(`generate`'s position ids from the attention-mask cumsum, the causal mask) keeps working, and a
row of a padded batch computes what it computes alone. Putting the user tokens at column 0 instead
would leave padding between them and the text, which shifts relative positions unless every
caller passes corrected position ids.

Position ids are returned as well (cumulative sum of the mask, as `generate` computes them): a
plain forward pass otherwise numbers columns 0..L-1, which padding shifts; for absolute position
embeddings (GPT-2) that changes the output, and rotary models are only invariant up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IGNORE_INDEX = -100
"""Label of positions that take no loss (Hugging Face's convention)."""


@dataclass
class SoftPromptInputs:
    """Model inputs with the user tokens inserted; `as_kwargs()` feeds `model(...)` or `model.generate(...)`."""

    inputs_embeds: torch.Tensor  # [B, M + L, H]
    attention_mask: torch.Tensor  # [B, M + L]
    position_ids: torch.Tensor  # [B, M + L]
    labels: torch.Tensor | None = None  # [B, M + L], IGNORE_INDEX on the user tokens

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        kwargs = {
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }
        if self.labels is not None:
            kwargs["labels"] = self.labels
        return kwargs


def prepend_user_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    user_tokens: torch.Tensor,
    user_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> SoftPromptInputs:
    """Embed `input_ids` [B, L] with the model's own embedding table and insert `user_tokens` [B, M, H].

    `user_mask` [B, M] (1 = real token) masks user tokens that are padding, e.g. short histories
    without a Perceiver. `labels` [B, L], if given, are extended with IGNORE_INDEX on the user tokens.
    """
    text_embeds = model.get_input_embeddings()(input_ids)
    batch, length = input_ids.shape
    num_user = user_tokens.shape[1]
    if user_mask is None:
        user_mask = torch.ones(batch, num_user, dtype=attention_mask.dtype, device=attention_mask.device)

    # For every output column: is it a user token, and which text / user column does it copy?
    left_pad = (attention_mask.cumsum(dim=-1) == 0).sum(dim=-1, keepdim=True)  # [B, 1]
    column = torch.arange(num_user + length, device=input_ids.device).expand(batch, -1)
    is_user = (column >= left_pad) & (column < left_pad + num_user)
    text_index = torch.where(column < left_pad, column, column - num_user).clamp(0, length - 1)
    user_index = (column - left_pad).clamp(0, num_user - 1)

    def merge(text: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        if text.dim() == 3:
            text_part = text.gather(1, text_index[..., None].expand(-1, -1, text.shape[-1]))
            user_part = user.gather(1, user_index[..., None].expand(-1, -1, user.shape[-1]))
            return torch.where(is_user[..., None], user_part, text_part)
        return torch.where(is_user, user.gather(1, user_index), text.gather(1, text_index))

    mask = merge(attention_mask, user_mask.to(attention_mask.dtype))
    position_ids = (mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    return SoftPromptInputs(
        inputs_embeds=merge(text_embeds, user_tokens.to(text_embeds.dtype)),
        attention_mask=mask,
        position_ids=position_ids,
        labels=None if labels is None else merge(labels, torch.full_like(user_mask, IGNORE_INDEX, dtype=labels.dtype)),
    )
