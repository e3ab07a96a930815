"""Stage 1 end to end on small data: training, evaluation, resume after a kill, DDP, the real bar."""

from __future__ import annotations

import json
import random
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from tests.conftest import REPO, run_pipeline
from userllm.data.collate import EncoderCollator
from userllm.data.datamodule import TimelineDataModule
from userllm.encoder.export import load_encoder
from userllm.modules.optim import warmup_cosine
from userllm.modules.pretrain import EncoderPretraining, is_hit

FEATURES = ["item", "rating", "category", "categories"]


@pytest.fixture
def synthetic(build_timelines):
    """40 users x 15 events over 30 items, with a learnable pattern: item ids mostly increase."""
    rng = random.Random(0)
    rows = []
    for user in range(40):
        item = rng.randrange(30)
        for t in range(15):
            item = (item + rng.choice([1, 1, 1, 2, 7])) % 30
            rows.append((f"u{user}", f"i{item}", t, float(rng.randint(1, 5)), [f"g{item % 4}"]))
    return build_timelines(rows)


def make_module(timelines, **overrides) -> EncoderPretraining:
    options = dict(
        encoder=dict(
            vocab_sizes={f: timelines.vocab_size(f) for f in FEATURES}, features=FEATURES,
            dim=16, layers=1, heads=2, dropout=0.1, max_len=8,
        ),
        loss_weights={"item": 1.0, "rating": 0.5, "category": 0.5, "categories": 0.5},
        lr=5e-3, warmup_steps=2, seed=7,
        popularity=torch.as_tensor(timelines.training_item_counts(), dtype=torch.float32),
    )
    return EncoderPretraining(**(options | overrides))


def make_datamodule(timelines) -> TimelineDataModule:
    return TimelineDataModule(
        timelines.folder, partial(EncoderCollator), history_len=8, stride=4, features=FEATURES, batch_size=16,
        seed=7,
    )


def trainer(tmp_path, epochs: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs,
    )


def test_fast_dev_run_logs_losses_and_ranking_metrics(synthetic, tmp_path):
    model, datamodule = make_module(synthetic), make_datamodule(synthetic)
    fit = trainer(tmp_path, 1, fast_dev_run=True)
    fit.fit(model, datamodule)
    assert torch.isfinite(fit.callback_metrics["train/loss"])
    metrics = fit.test(model, datamodule, verbose=False)[0]
    for name in ("recall@1", "recall@5", "recall@10", "recall@20", "ndcg@10", "mrr", "pop_recall@10"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0
    for feature in FEATURES[1:]:
        assert 0.0 <= metrics[f"test/next_{feature}_accuracy"] <= 1.0


def test_training_beats_popularity_on_a_learnable_pattern(synthetic, tmp_path):
    model, datamodule = make_module(synthetic), make_datamodule(synthetic)
    fit = trainer(tmp_path, 25, enable_checkpointing=False)
    fit.fit(model, datamodule)
    metrics = fit.test(model, datamodule, verbose=False)[0]
    assert metrics["test/recall@5"] > metrics["test/pop_recall@5"]


def test_loss_weights_must_name_encoder_features(synthetic):
    with pytest.raises(ValueError, match="mood"):
        make_module(synthetic, loss_weights={"item": 1.0, "mood": 1.0})


def test_warmup_cosine_schedule():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55) and factor(110) == pytest.approx(0.1)


class Interrupt(Callback):
    """Kills training mid-epoch, like a lost machine."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated kill")


def test_resume_after_interrupt_matches_uninterrupted_run(synthetic, tmp_path):
    epochs = 4

    def checkpoints(folder):
        return ModelCheckpoint(dirpath=folder, save_last=True, monitor="val/ndcg@10", mode="max")

    torch.manual_seed(0)
    reference = make_module(synthetic)
    trainer(tmp_path / "a", epochs, callbacks=[checkpoints(tmp_path / "a")]).fit(reference, make_datamodule(synthetic))

    torch.manual_seed(0)
    killed = make_module(synthetic)
    with pytest.raises(RuntimeError, match="simulated kill"):
        trainer(tmp_path / "b", epochs, callbacks=[checkpoints(tmp_path / "b"), Interrupt(at_step=9)]).fit(
            killed, make_datamodule(synthetic)
        )
    assert (tmp_path / "b" / "last.ckpt").exists()  # written at the end of each finished epoch

    resumed = make_module(synthetic)
    trainer(tmp_path / "b", epochs, callbacks=[checkpoints(tmp_path / "b")]).fit(
        resumed, make_datamodule(synthetic), ckpt_path=str(tmp_path / "b" / "last.ckpt"), weights_only=True
    )
    for (name, expected), got in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(got, expected, msg=name)


def test_pipeline_smoke_writes_encoder_and_metrics(ml100k_processed, tmp_path):
    result = run_pipeline(
        "pretrain", "experiment=smoke", "logger=csv", f"paths.output_dir={tmp_path}",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=5",
    )
    stage = tmp_path / "movielens_100k" / "pretrain"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert {"test/recall@10", "test/ndcg@10", "test/pop_recall@10", "val/ndcg@10"} <= set(metrics)
    encoder = load_encoder(stage)
    assert encoder.config.dim == 16
    assert "test/recall@10" in result.stdout


@pytest.mark.parametrize(
    "ablation",
    [["encoder.fusion=late"], ["encoder.fusion=sum"], ["encoder.features=[item]"], ["data.history_len=200"],
     ["loss.weights={item: 1.0, rating: 0.0, category: 1.0}"], ["loss.sampled_negatives=100"]],
    ids=["late-fusion", "sum-fusion", "item-only", "history-200", "loss-weights", "sampled-softmax"],
)
def test_ablations_run_end_to_end(ml100k_processed, tmp_path, ablation):
    run_pipeline(
        "pretrain", "experiment=smoke", "logger=none", f"paths.output_dir={tmp_path}", "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2", *ablation,
    )
    metrics = json.loads((tmp_path / "movielens_100k" / "pretrain" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/recall@10"] <= 1.0


def test_pipeline_resumes_from_last_checkpoint(ml100k_processed, tmp_path):
    common = ["experiment=smoke", "logger=none", f"paths.output_dir={tmp_path}", "+trainer.limit_train_batches=3"]
    run_pipeline("pretrain", *common, "trainer.max_epochs=1")
    result = run_pipeline("pretrain", *common, "trainer.max_epochs=2", "ckpt_path=last")
    assert "resuming from" in result.stderr + result.stdout


def test_ddp_two_cpu_processes(ml100k_processed, tmp_path):
    run_pipeline(
        "pretrain", "experiment=smoke", "trainer=ddp", "logger=none", f"paths.output_dir={tmp_path}",
        "trainer.max_epochs=1", "+trainer.limit_train_batches=4", "threads=1",
    )
    checkpoints = sorted(p.name for p in (tmp_path / "movielens_100k" / "pretrain" / "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_make_pretrain_reaches_the_bar_on_movielens_100k(ml100k_processed):
    """The default `make pretrain`: full ranking over all items, seen items excluded."""
    run_pipeline("pretrain", "logger=csv", timeout=3600)
    metrics = json.loads((REPO / "outputs" / "movielens_100k" / "pretrain" / "metrics.json").read_text())
    assert metrics["test/recall@10"] >= 0.19, metrics
    assert metrics["test/ndcg@10"] >= 0.10, metrics
    assert metrics["test/recall@10"] > metrics["test/pop_recall@10"]


def test_a_multi_valued_prediction_hits_if_it_is_any_of_the_values():
    predicted = torch.tensor([3, 4, 5])
    assert is_hit(predicted, torch.tensor([3, 2, 5])).tolist() == [True, False, True]
    assert is_hit(predicted, torch.tensor([[2, 3], [2, 0], [0, 0]])).tolist() == [True, False, False]
