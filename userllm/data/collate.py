"""Collators that turn timeline windows into tensors: for the user encoder, and for the LLM.

The encoder batch holds, per feature, the padded ids of the history window, the next-event targets
of every position (the window shifted by one, ending with the example's target), the mask of real
events, and the ids of every item the user saw before the target (for excluding them in ranking).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from userllm.data.timelines import PAD, Timelines
from userllm.llm.prompts import build_prompt, history_as_text
from userllm.llm.soft_prompt import IGNORE_INDEX

if TYPE_CHECKING:
    from userllm.tasks import Task


def pad_rows(
    rows: list[np.ndarray] | list[list[int]], side: str = "right", length: int | None = None, value: int = PAD
) -> torch.Tensor:
    """Stack id sequences into a [B, length, ...] LongTensor filled with `value` on the chosen side;
    rows longer than `length` keep their most recent (last) entries. Rows may be [n] or, for a
    multi-valued feature, [n, K] (equal K)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    length = max(1, max((len(r) for r in rows), default=0)) if length is None else length
    trailing = np.shape(rows[0])[1:] if len(rows) else ()
    out = torch.full((len(rows), length, *trailing), value, dtype=torch.long)
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
                    [np.concatenate([e["history"][f][1:], np.asarray(e["target"][f])[None]]) for e in examples],
                    self.padding_side,
                )
                for f in features
            },
            "user": torch.tensor([e["user"] for e in examples], dtype=torch.long),
        }
        events = [np.ones(len(e["history"][features[0]]), dtype=np.int64) for e in examples]
        batch["mask"] = pad_rows(events, self.padding_side).bool()
        if self.with_seen:
            batch["seen"] = pad_rows([self._seen_items(e) for e in examples])
        return batch

    def _seen_items(self, example: dict[str, Any]) -> np.ndarray:
        """Every item of the user's timeline before the target, not only those in the window."""
        first = int(self.timelines.offsets[example["user"]])
        return self.timelines.features["item"][first : example["window"][1]]


class PromptCollator:
    """Windows to LLM batches for one task: encoder inputs plus tokenised prompts and targets.

    `llm_inputs` holds the right-padded prompt + target (+ EOS) with labels only on the target, for
    the loss; `generation_inputs` the left-padded prompts alone, for `generate`. With
    `text_history` (the text-prompt baseline) the history window is written into the prompt.
    """

    def __init__(
        self,
        task: "Task",
        tokenizer,
        text_history: bool = False,
        history_len: int = 50,
        max_target_tokens: int = 48,
        padding_side: str = "right",
    ) -> None:
        self.task = task
        self.tokenizer = tokenizer
        self.text_history = text_history
        self.history_len = history_len
        self.max_target_tokens = max_target_tokens
        self.encoder_collate = EncoderCollator(task.timelines, padding_side)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.encoder_collate(examples)
        windows = [e["window"] for e in examples]
        prompts = [self.prompt(start, end) for start, end in windows]
        targets = [self.task.target(start, end) for start, end in windows]
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        target_ids = [
            ids[: self.max_target_tokens] + [eos]
            for ids in self.tokenizer(targets, add_special_tokens=False)["input_ids"]
        ]
        sequences = [p + t for p, t in zip(prompt_ids, target_ids)]
        labels = [[IGNORE_INDEX] * len(p) + t for p, t in zip(prompt_ids, target_ids)]
        pad = self.tokenizer.pad_token_id
        batch["llm_inputs"] = {
            "input_ids": pad_rows(sequences, "right", value=pad),
            "attention_mask": pad_rows([[1] * len(s) for s in sequences], "right", value=0),
            "labels": pad_rows(labels, "right", value=IGNORE_INDEX),
        }
        batch["generation_inputs"] = {
            "input_ids": pad_rows(prompt_ids, "left", value=pad),
            "attention_mask": pad_rows([[1] * len(p) for p in prompt_ids], "left", value=0),
        }
        batch["target_text"] = targets
        batch["target_item"] = torch.tensor([int(self.task.timelines.features["item"][end]) for _, end in windows])
        return batch

    def prompt(self, start: int, end: int) -> str:
        """The chat-formatted prompt; the text-prompt baseline writes the history into it."""
        history = None
        if self.text_history:
            history = history_as_text(self.task.history_events(start, end), self.history_len)
        return build_prompt(self.tokenizer, self.task.instruction(start, end), history)

