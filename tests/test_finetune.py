"""Stage 2 on tiny models: tasks, the prompt collator, and every integration x strategy end to end."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from tests.conftest import run_pipeline
from tests.tiny_models import byte_level_tokenizer, tiny_llm
from userllm.data.collate import PromptCollator
from userllm.data.datamodule import TimelineDataModule
from userllm.encoder.model import EncoderConfig, UserEncoder
from userllm.llm.prompts import INSTRUCTIONS, build_prompt
from userllm.llm.soft_prompt import IGNORE_INDEX
from userllm.modules.contextualize import INTEGRATIONS, UserLLM
from userllm.tasks import Task

GENRES = ["Comedy", "Drama", "Horror"]


@pytest.fixture
def timelines(build_timelines):
    """24 users x 10 events over 12 titled items, each with one or two genres."""
    rng = random.Random(0)
    rows = []
    for user in range(24):
        for t in range(10):
            item = rng.randrange(12)
            genres = [GENRES[item % 3]] + ([GENRES[(item + 1) % 3]] if item % 4 == 0 else [])
            rows.append((f"u{user}", item, t, float(rng.randint(1, 5)), genres))
    return build_timelines(rows)


@pytest.fixture
def tokenizer(timelines):
    titles = timelines.items["title"].to_list()
    corpus = titles + GENRES + list(INSTRUCTIONS.values()) + ["The user's history, oldest first:", "rated 4 | Comedy"]
    return byte_level_tokenizer(corpus * 3)


def test_favorite_label_counts_all_genres_and_breaks_ties_by_recency(timelines):
    task = Task("favorite_genre", timelines, "genre")
    items = timelines.features["item"]
    counts: dict[str, int] = {}
    for position in range(0, 5):
        for genre in task.item_categories[int(items[position])]:
            counts[genre] = counts.get(genre, 0) + 1
    best = max(counts.values())
    label = task.favorite_label(0, 5)
    assert counts[label] == best
    tied = [g for g, c in counts.items() if c == best]
    if len(tied) > 1:  # the tied genre seen last wins
        last = {g: max(p for p in range(5) if g in task.item_categories[int(items[p])]) for g in tied}
        assert label == max(last, key=last.get)
    assert task.candidates == timelines.vocab["category"]


def test_tasks_validate_name_and_review_needs_text(timelines):
    with pytest.raises(ValueError, match="unknown task"):
        Task("sentiment", timelines)
    with pytest.raises(ValueError, match="review text"):
        Task("review", timelines)
    next_item = Task("next_item", timelines)
    assert next_item.target(0, 3) == next_item.titles[int(timelines.features["item"][3])]
    assert "Movie" in next_item.candidates[0]


@pytest.mark.parametrize("text_history", [False, True])
def test_prompt_collator_labels_only_the_target(timelines, tokenizer, text_history):
    task = Task("favorite_genre", timelines, "genre")
    collate = PromptCollator(task, tokenizer, text_history=text_history, history_len=4)
    examples = [
        {"user": 0, "window": (0, 4), "history": {"item": timelines.features["item"][0:4]},
         "target": {"item": int(timelines.features["item"][4])}},
        {"user": 0, "window": (2, 4), "history": {"item": timelines.features["item"][2:4]},
         "target": {"item": int(timelines.features["item"][4])}},
    ]
    batch = collate(examples)
    inputs = batch["llm_inputs"]
    for row, target in enumerate(batch["target_text"]):
        labelled = inputs["labels"][row][inputs["labels"][row] != IGNORE_INDEX].tolist()
        assert labelled == tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    generation = batch["generation_inputs"]
    assert (generation["attention_mask"][:, -1] == 1).all(), "prompts are left-padded for generate"
    prompt = tokenizer.decode(generation["input_ids"][0], skip_special_tokens=True)
    assert ("history, oldest first" in prompt) == text_history
    assert prompt.strip().endswith("assistant")
    assert task.instruction(0, 4) in collate.prompt(0, 4)
    if not text_history:
        assert collate.prompt(0, 4) == build_prompt(tokenizer, task.instruction(0, 4))


def make_model(timelines, tokenizer, integration, strategy, perceiver_latents=4, task_name="favorite_genre", **options):
    features = ["item", "rating", "category"]
    encoder = UserEncoder(
        EncoderConfig(vocab_sizes={f: timelines.vocab_size(f) for f in features}, features=features,
                      dim=16, layers=1, heads=2, max_len=8)
    )
    task = Task(task_name, timelines, "genre")
    model = UserLLM(
        tiny_llm(tokenizer), tokenizer, task, integration=integration, encoder=encoder, strategy=strategy,
        perceiver={"latents": perceiver_latents, "layers": 1, "heads": 2},
        cross_attention={"every": 2},
        lora={"rank": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        popularity=torch.as_tensor(timelines.training_item_counts(), dtype=torch.float32),
        majority_label="Comedy", **{"warmup_steps": 1, "num_beams": 3, "ks": (1, 3), "max_new_tokens": 4, **options},
    )
    return model, task


def make_datamodule(timelines, tokenizer, task, integration):
    collator = PromptCollator(task, tokenizer, text_history=integration == "text_prompt", history_len=6)
    return TimelineDataModule(
        timelines.folder, lambda _: collator, history_len=6, stride=3, batch_size=4, eval_batch_size=8,
        max_eval_users=8,
    )


def run(model, datamodule, tmp_path, **kwargs) -> dict:
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0, **kwargs,
    )
    if model.num_trainable():
        trainer.fit(model, datamodule)
    return trainer.test(model, datamodule, verbose=False)[0]


@pytest.mark.parametrize("integration", INTEGRATIONS)
@pytest.mark.parametrize("strategy", ["full", "lora", "enc", "proj"])
def test_fast_dev_run_every_integration_and_strategy(timelines, tokenizer, tmp_path, integration, strategy):
    model, task = make_model(timelines, tokenizer, integration, strategy)
    metrics = run(model, make_datamodule(timelines, tokenizer, task, integration), tmp_path, fast_dev_run=True)
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    assert "test/majority_accuracy" in metrics


@pytest.mark.parametrize("integration", ["cross_attention", "soft_prompt"])
def test_next_item_ranks_catalogue_titles_beside_popularity(timelines, tokenizer, tmp_path, integration):
    model, task = make_model(timelines, tokenizer, integration, "enc", task_name="next_item")
    metrics = run(model, make_datamodule(timelines, tokenizer, task, integration), tmp_path, fast_dev_run=True)
    assert {"test/recall@1", "test/recall@3", "test/pop_recall@1", "test/pop_recall@3"} <= set(metrics)
    assert all(p and set(p) <= set(task.candidates) for p in model.predictions)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_next_item_leaves_out_titles_seen_before_the_target(timelines, tokenizer, tmp_path, exclude_seen):
    """Each user saw about 7 of the 12 titles: with exclude_seen every answer is one of the others
    (or the target itself, which the popularity baseline's ranking keeps too); without, some are seen."""
    model, task = make_model(timelines, tokenizer, "soft_prompt", "enc", task_name="next_item",
                             num_beams=6, ks=(1, 5), exclude_seen=exclude_seen)
    datamodule = make_datamodule(timelines, tokenizer, task, "soft_prompt")
    metrics = run(model, datamodule, tmp_path, fast_dev_run=True)
    batch = next(iter(datamodule.test_dataloader()))
    seen = [{task.titles[i] for i in row.tolist() if i >= 2} - {target}
            for row, target in zip(batch["seen"], batch["target_text"])]
    answered_seen = [set(answers) & titles for answers, titles in zip(model.predictions, seen)]
    assert len(model.predictions) == len(seen) and all(model.predictions)
    assert not any(answered_seen) if exclude_seen else any(answered_seen)
    assert "test/pop_recall@5" in metrics


def test_soft_prompt_without_perceiver_masks_padded_events(timelines, tokenizer, tmp_path):
    model, task = make_model(timelines, tokenizer, "soft_prompt", "enc", perceiver_latents=0)
    metrics = run(model, make_datamodule(timelines, tokenizer, task, "soft_prompt"), tmp_path, fast_dev_run=True)
    assert "test/accuracy" in metrics


def test_training_reduces_the_loss_and_opens_the_gates(timelines, tokenizer, tmp_path):
    model, task = make_model(timelines, tokenizer, "cross_attention", "enc")
    datamodule = make_datamodule(timelines, tokenizer, task, "cross_attention")
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    before = model.loss(batch).item()
    run(model, datamodule, tmp_path, max_steps=30, limit_val_batches=0)
    assert model.loss(batch).item() < before
    assert any(g.abs().item() > 0 for g in model.adapter.gates())


def test_checkpoint_holds_only_trainable_parameters(timelines, tokenizer, tmp_path):
    model, task = make_model(timelines, tokenizer, "cross_attention", "proj")
    datamodule = make_datamodule(timelines, tokenizer, task, "cross_attention")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_steps=2,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)["state_dict"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(saved) <= trainable | {n for n, _ in model.named_buffers()}
    assert not any(k.startswith("encoder.") for k in saved), "proj freezes the encoder"
    assert any("cross_attn" in k or "attn_gate" in k for k in saved)

    fresh, _ = make_model(timelines, tokenizer, "cross_attention", "proj")
    fresh.load_state_dict(saved, strict=False)
    for name in saved:
        torch.testing.assert_close(fresh.state_dict()[name], model.state_dict()[name])


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_learning_rates_per_group_pretrained_llm_gates_and_new_modules(timelines, tokenizer, strategy):
    model, _ = make_model(timelines, tokenizer, "cross_attention", strategy)
    model.hparams.update(lr=1e-3, gate_lr=0.1, llm_lr=5e-5)
    model.trainer = SimpleNamespace(estimated_stepping_batches=10)
    optimizer = model.configure_optimizers()["optimizer"]
    rate = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert set(rate) == set(names), "every trainable parameter is optimised, once"
    for key, name in names.items():
        if name.endswith("_gate"):
            expected = 0.1
        elif "lora_" in name or ".cross_attn." in name or not name.startswith("llm."):
            expected = 1e-3
        else:
            expected = 5e-5
        assert rate[key] == expected, name
    assert (5e-5 in rate.values()) == (strategy == "full")


def test_unknown_integration_is_rejected(timelines, tokenizer):
    with pytest.raises(ValueError, match="unknown integration"):
        make_model(timelines, tokenizer, "adapter", "enc")


@pytest.mark.slow
def test_finetune_pipeline_on_real_smollm2(ml100k_processed, tmp_path):
    """The real LLM end to end: load (converted once), train a few steps, constrained generation."""
    result = run_pipeline(
        "finetune", "logger=csv", f"paths.output_dir={tmp_path}", "encoder.init=random",
        "trainer.max_steps=3", "trainer.limit_val_batches=0", "max_eval_users=8", "eval_batch_size=8",
        "batch_size=4", timeout=900,
    )
    metrics = json.loads((tmp_path / "movielens_100k" / "finetune" / "favorite_genre" / "cross_attention" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/accuracy"] <= 1.0 and "test/majority_accuracy" in metrics
    generations = [json.loads(line) for line in next(tmp_path.glob("movielens_100k/runs/finetune/*/generations.jsonl")).open()]
    genres = set(json.loads((ml100k_processed / "meta.json").read_text())["vocab"]["category"])
    assert generations and all(row["output"] in genres for row in generations)
    assert "trainable parameters" in result.stderr + result.stdout
