"""Collators that turn timeline windows into tensors for the user encoder.

The encoder batch holds, per feature, the padded ids of the history window, the next-event targets
of every position (the window shifted by one, ending with the example's target), the mask of real
events, and the ids of every item the user saw before the target (for excluding them in ranking).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from userllm.data.timelines import PAD, Timelines


def pad_rows(rows: list[np.ndarray], side: str = "right", length: int | None = None) -> torch.Tensor:
    """Stack 1-D id arrays into a [B, length] LongTensor filled with PAD on the chosen side."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    length = max(1, max((len(r) for r in rows), default=0)) if length is None else length
    out = torch.full((len(rows), length), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        row = torch.as_tensor(np.asarray(row[-length:], dtype=np.int64))
        if len(row):
            if side == "right":
                out[i, : len(row)] = row
            else:
                out[i, length - len(row) :] = row
    return out


class EncoderCollator:
    """Windows to encoder tensors: `features`, `targets` (dicts of [B, L]), `mask`, `user`, `seen`.

    `targets[f][b, t]` is feature f of the event after position t, so every position predicts the
    next event; the last real position's target is the example's target event.
    """

    def __init__(self, timelines: Timelines, padding_side: str = "right", with_seen: bool = True) -> None:
        self.timelines = timelines
        self.padding_side = padding_side
        self.with_seen = with_seen

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        features = list(examples[0]["history"])
        batch: dict[str, Any] = {
            "features": {f: pad_rows([e["history"][f] for e in examples], self.padding_side) for f in features},
            "targets": {
                f: pad_rows(
                    [np.append(e["history"][f][1:], e["target"][f]) for e in examples], self.padding_side
                )
                for f in features
            },
            "user": torch.tensor([e["user"] for e in examples], dtype=torch.long),
        }
        batch["mask"] = batch["features"][features[0]] != PAD
        if self.with_seen:
            batch["seen"] = pad_rows([self._seen_items(e) for e in examples])
        return batch

    def _seen_items(self, example: dict[str, Any]) -> np.ndarray:
        """Every item of the user's timeline before the target, not only those in the window."""
        first = int(self.timelines.offsets[example["user"]])
        return self.timelines.features["item"][first : example["window"][1]]
