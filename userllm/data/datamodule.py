"""One LightningDataModule for both stages: timeline windows in, collated batches out.

An example is a window of a user's timeline: up to `history_len` consecutive events and the event
right after them (the target). Training windows tile each user's training events from the most
recent backwards, `stride` events apart; validation and test have one window per user whose target
is the second to last and the last event. What a batch looks like is the collator's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from userllm.data.timelines import Timelines

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    """A history window `[start, end)` of global event indices and its target event `end`."""

    user: int
    start: int
    end: int


def window_examples(timelines: Timelines, split: str, history_len: int, stride: int) -> list[Example]:
    """The examples of one split, for every user, as index windows into the event arrays."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    examples = []
    for user in range(timelines.num_users):
        first, stop = int(timelines.offsets[user]), int(timelines.offsets[user + 1])
        if split == "train":
            # Targets are training events only (the last two events are held out); the first event
            # has no history, so it is never a target.
            targets = range(stop - 3, first, -stride)
        else:
            targets = [stop - 2] if split == "val" else [stop - 1]
        examples.extend(Example(user, max(first, t - history_len), t) for t in targets)
    return examples


class TimelineDataset(Dataset):
    """Examples of one split; each item carries the window's feature arrays and the target ids."""

    def __init__(self, timelines: Timelines, examples: list[Example], features: tuple[str, ...]):
        self.timelines = timelines
        self.examples = examples
        self.features = features

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        window = self.timelines.window
        return {
            "user": ex.user,
            "window": (ex.start, ex.end),
            "history": {f: window(f, ex.start, ex.end) for f in self.features},
            "target": {f: window(f, ex.end, ex.end + 1)[0] for f in self.features},
        }


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch), so the order of epoch k never depends on
    what ran before it: a resumed run sees exactly the batches the uninterrupted run would have.
    Lightning calls `set_epoch` before each epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class TimelineDataModule(L.LightningDataModule):
    """Reads prepared timelines and serves train/val/test windows through a pluggable collator.

    The collator is any callable that turns a list of dataset items into a batch; it is built
    after `setup` so it can see the timelines (vocabularies, titles) through `collator_factory`.
    """

    def __init__(
        self,
        processed_dir: str | Path,
        collator_factory: Callable[[Timelines], Callable[[list[dict]], Any]],
        history_len: int = 50,
        stride: int | None = None,
        features: tuple[str, ...] | list[str] = ("item", "rating", "category"),
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_eval_users: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if history_len < 1:
            raise ValueError(f"data.history_len={history_len}: must be at least 1")
        self.processed_dir = Path(processed_dir)
        self.collator_factory = collator_factory
        self.history_len = history_len
        self.stride = stride or history_len
        self.features = tuple(features)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_eval_users = max_eval_users
        self.seed = seed
        self.timelines: Timelines | None = None
        self.datasets: dict[str, TimelineDataset] = {}
        self.collate: Callable[[list[dict]], Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.timelines is not None:
            return
        self.timelines = Timelines.load(self.processed_dir)
        unknown = set(self.features) - set(self.timelines.feature_names)
        if unknown:
            raise ValueError(
                f"unknown features {sorted(unknown)} in data.features: expected a subset of "
                f"{sorted(self.timelines.feature_names)}"
            )
        for split in SPLITS:
            examples = window_examples(self.timelines, split, self.history_len, self.stride)
            if split != "train" and self.max_eval_users is not None:
                examples = examples[: self.max_eval_users]
            self.datasets[split] = TimelineDataset(self.timelines, examples, self.features)
        self.collate = self.collator_factory(self.timelines)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed) if shuffle else None,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
