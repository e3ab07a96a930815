"""The DataModule's windows and the encoder collator's batches, on hand-checked timelines."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from userllm.data.collate import EncoderCollator, pad_rows
from userllm.data.datamodule import EpochShuffleSampler, TimelineDataModule, window_examples


def ten_event_user(build_timelines):
    """One user with 10 events at times 0..9 and a second with 4."""
    rows = [("a", f"i{t}", t, 4.0) for t in range(10)] + [("b", f"i{t}", t, 3.0) for t in range(4)]
    return build_timelines(rows)


def test_split_targets_are_last_and_second_to_last(build_timelines):
    timelines = ten_event_user(build_timelines)
    (test_a, test_b) = window_examples(timelines, "test", history_len=3, stride=3)
    (val_a, _) = window_examples(timelines, "val", history_len=3, stride=3)
    assert (test_a.start, test_a.end) == (6, 9)  # user a occupies events 0..9
    assert (val_a.start, val_a.end) == (5, 8)
    assert (test_b.start, test_b.end) == (10, 13)  # user b: 10..13, history 10..12


def test_training_windows_tile_training_events_from_the_end(build_timelines):
    timelines = ten_event_user(build_timelines)
    train = [e for e in window_examples(timelines, "train", history_len=3, stride=3) if e.user == 0]
    # Training events of user a are 0..7; targets 7, 4, 1 with histories of up to 3 events.
    assert [(e.start, e.end) for e in train] == [(4, 7), (1, 4), (0, 1)]
    train_b = [e for e in window_examples(timelines, "train", 3, 3) if e.user == 1]
    assert [(e.start, e.end) for e in train_b] == [(10, 11)]  # only event 11 has a training history
    with pytest.raises(ValueError, match="unknown split"):
        window_examples(timelines, "dev", 3, 3)


def test_stride_one_gives_a_window_per_training_target(build_timelines):
    timelines = ten_event_user(build_timelines)
    train = [e for e in window_examples(timelines, "train", history_len=50, stride=1) if e.user == 0]
    assert sorted(e.end for e in train) == list(range(1, 8))
    assert all(e.start == 0 for e in train)


@pytest.mark.parametrize("side", ["right", "left"])
def test_encoder_batch_targets_are_the_next_events(build_timelines, side):
    timelines = ten_event_user(build_timelines)
    datamodule = TimelineDataModule(
        timelines.folder, partial(EncoderCollator, padding_side=side), history_len=4, batch_size=8
    )
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    items = timelines.features["item"]
    mask = batch["mask"]
    assert mask.sum(1).tolist() == [4, 3]
    real = batch["features"]["item"][0][mask[0]]
    assert real.tolist() == items[5:9].tolist()
    assert batch["targets"]["item"][0][mask[0]].tolist() == items[6:10].tolist()
    assert batch["targets"]["item"][1][mask[1]].tolist() == items[11:14].tolist()
    assert (batch["features"]["item"][~mask] == 0).all() and (batch["targets"]["item"][~mask] == 0).all()
    assert batch["seen"][0][batch["seen"][0] > 0].tolist() == items[0:9].tolist()  # whole past, not the window
    padded_position = 0 if side == "left" else -1
    assert not mask[1, padded_position]


def test_datamodule_rejects_unknown_features(build_timelines):
    timelines = ten_event_user(build_timelines)
    datamodule = TimelineDataModule(timelines.folder, EncoderCollator, features=["item", "mood"])
    with pytest.raises(ValueError, match="mood"):
        datamodule.setup()


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    first, second = EpochShuffleSampler(20, seed=1), EpochShuffleSampler(20, seed=1)
    first.set_epoch(3)
    list(second)  # consuming epoch 0 must not change epoch 3's order
    second.set_epoch(3)
    assert list(first) == list(second)
    first.set_epoch(4)
    assert list(first) != list(second)


def test_pad_rows_truncates_to_the_most_recent():
    out = pad_rows([np.array([5, 6, 7]), np.array([8])], side="right", length=2)
    assert out.tolist() == [[6, 7], [8, 0]]
    assert pad_rows([np.array([8])], side="left", length=3).tolist() == [[0, 0, 8]]
    with pytest.raises(ValueError, match="padding side"):
        pad_rows([np.array([1])], side="middle")


def test_real_movielens_batches(ml100k_processed):
    datamodule = TimelineDataModule(ml100k_processed, EncoderCollator, history_len=50, batch_size=32)
    datamodule.setup()
    assert len(datamodule.datasets["test"]) == 943 and len(datamodule.datasets["val"]) == 943
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["features"]["item"].shape == (32, 50)
    assert set(batch["features"]) == {"item", "rating", "category"}
    assert batch["targets"]["item"].dtype == torch.long


def test_multi_valued_categories_come_from_the_item(build_timelines):
    rows = [("a", "x", 0, 4.0, ["Drama", "War"]), ("a", "y", 1, 3.0, ["Comedy"]),
            ("a", "z", 2, 5.0, ["Comedy", "Drama", "Romance"]), ("a", "x", 3, 2.0, ["Drama", "War"])]
    timelines = build_timelines(rows)
    ids = {name: i for i, name in enumerate(timelines.vocab["category"], start=2)}
    assert timelines.vocab_size("categories") == timelines.vocab_size("category")
    assert "categories" in timelines.feature_names
    expected = [[ids["Drama"], ids["War"], 0], [ids["Comedy"], 0, 0], [ids["Comedy"], ids["Drama"], ids["Romance"]]]
    assert timelines.window("categories", 0, 3).tolist() == expected
    datamodule = TimelineDataModule(timelines.folder, EncoderCollator, history_len=3,
                                    features=("item", "categories"), batch_size=2)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert batch["features"]["categories"].shape == (1, 3, 3)
    # The test target is event 3, so the window is events 0..2 and the last target is item x.
    assert batch["features"]["categories"][0].tolist() == expected
    assert batch["targets"]["categories"][0].tolist() == expected[1:] + [[ids["Drama"], ids["War"], 0]]
    assert batch["mask"].tolist() == [[True, True, True]]
