"""The evaluate stage: finetune's checkpoint, rebuilt and tested apart, scores as finetune's own test.

End to end on the real MovieLens-100K with a tiny random LLM saved as a Hugging Face folder, so each
run takes seconds; loading checkpoints into a model built differently, in process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import run_pipeline
from tests.test_finetune import make_model, timelines, tokenizer  # noqa: F401  (fixtures)
from tests.tiny_models import byte_level_tokenizer, tiny_llm
from userllm.llm.prompts import INSTRUCTIONS

STAGE2 = ("favorite_genre", "cross_attention")
# Validation (and the best checkpoint) at step 2, training ends at step 3: Lightning's own last.ckpt
# would hold step 2, finetune must rewrite it with the model it ended with.
FINETUNE = ("experiment=smoke", "logger=csv", "threads=1", "encoder.init=random", "trainer.max_steps=3",
            "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
            "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.save_top_k=1",
            "batch_size=4", "eval_batch_size=8", "max_eval_users=8")


@pytest.fixture(scope="module")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A tiny random LLM and its tokenizer as a Hugging Face folder, for `llm.name_or_path`."""
    folder = tmp_path_factory.mktemp("tiny_llm")
    byte_level = byte_level_tokenizer([*INSTRUCTIONS.values(), "Action Comedy Drama Romance Thriller"] * 3)
    byte_level.save_pretrained(folder)
    tiny_llm(byte_level).save_pretrained(folder)
    return folder


def stage_args(output_dir: Path, llm_dir: Path) -> tuple[str, ...]:
    return (*FINETUNE, f"paths.output_dir={output_dir}", f"llm.name_or_path={llm_dir}")


@pytest.fixture(scope="module")
def finetuned(ml100k_processed, tiny_llm_dir, tmp_path_factory) -> Path:
    """Outputs of a 3-step finetune that tested at its end; returns the dataset's stage folder."""
    output_dir = tmp_path_factory.mktemp("outputs")
    run_pipeline("finetune", *stage_args(output_dir, tiny_llm_dir), timeout=600)
    return output_dir / "movielens_100k"


def newest_run(stage_dir: Path, stage: str) -> Path:
    return max((stage_dir / "runs" / stage).iterdir())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_evaluate_scores_the_last_checkpoint_as_finetune_tested_it(finetuned, tiny_llm_dir):
    checkpoint = finetuned / "finetune" / Path(*STAGE2) / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3, "last.ckpt is the model finetune ended with"
    result = run_pipeline("evaluate", *stage_args(finetuned.parent, tiny_llm_dir), timeout=600)
    assert f"loaded the trainable parameters of {checkpoint} (step 3)" in result.stdout + result.stderr
    finetune = read_json(finetuned / "finetune" / Path(*STAGE2) / "metrics.json")
    evaluate = read_json(finetuned / "evaluate" / Path(*STAGE2) / "metrics.json")
    assert {"test/accuracy", "test/majority_accuracy"} <= set(evaluate)
    assert evaluate == finetune
    assert read_json(newest_run(finetuned, "evaluate") / "metrics.json") == evaluate
    generations = [(newest_run(finetuned, stage) / "generations.jsonl").read_text()
                   for stage in ("finetune", "evaluate")]
    assert generations[0] and generations[0] == generations[1]


def test_evaluate_best_reads_the_checkpoint_finetune_recorded(finetuned, tiny_llm_dir, tmp_path):
    result = run_pipeline("evaluate", *stage_args(finetuned.parent, tiny_llm_dir), "ckpt=best",
                          f"result_dir={tmp_path}", timeout=600)
    best = finetuned / "finetune" / Path(*STAGE2) / "checkpoints" / "epoch=0-step=2.ckpt"
    assert f"loaded the trainable parameters of {best} (step 2)" in result.stdout + result.stderr
    assert "test/accuracy" in read_json(tmp_path / "metrics.json")


def test_missing_checkpoint_is_an_error_naming_the_path(ml100k_processed, tiny_llm_dir, tmp_path):
    expected = tmp_path / "movielens_100k" / "finetune" / Path(*STAGE2) / "checkpoints" / "last.ckpt"
    with pytest.raises(AssertionError, match=re.escape(f"no finetune checkpoint: {expected} does not exist")):
        run_pipeline("evaluate", *stage_args(tmp_path, tiny_llm_dir), timeout=600)
    assert not (tmp_path / "movielens_100k" / "evaluate").exists()


def test_finetune_without_test_leaves_it_to_evaluate(ml100k_processed, tiny_llm_dir, tmp_path):
    args = (*stage_args(tmp_path, tiny_llm_dir), "trainer.max_steps=1")
    run_pipeline("finetune", *args, "test_after_fit=false", timeout=600)
    stage_dir = tmp_path / "movielens_100k"
    metrics = read_json(stage_dir / "finetune" / Path(*STAGE2) / "metrics.json")
    assert "train/loss" in metrics and not any(name.startswith("test/") for name in metrics)
    assert not (newest_run(stage_dir, "finetune") / "generations.jsonl").exists()
    run_pipeline("report", f"paths.output_dir={tmp_path}", timeout=120)
    assert "not run yet: `make evaluate" in (tmp_path / "report.md").read_text()
    run_pipeline("evaluate", *args, timeout=600)
    report = run_pipeline("report", f"paths.output_dir={tmp_path}", "print_report=true", timeout=120).stdout
    assert "| favorite_genre | cross_attention | test/accuracy |" in report and "| evaluate |" in report


def save_checkpoint(model, path: Path) -> None:
    """What Lightning writes, reduced to what `load_trainable` reads."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams), "global_step": 7}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


def test_load_trainable_restores_exactly_the_trainable_part(timelines, tokenizer, tmp_path):  # noqa: F811
    trained, _ = make_model(timelines, tokenizer, "cross_attention", "enc")
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(1.0)
    save_checkpoint(trained, tmp_path / "last.ckpt")
    fresh, _ = make_model(timelines, tokenizer, "cross_attention", "enc")
    assert fresh.load_trainable(tmp_path / "last.ckpt") == 7
    torch.testing.assert_close(fresh.state_dict(), trained.state_dict())


@pytest.mark.parametrize(("integration", "strategy", "message"), [
    ("soft_prompt", "enc", "integration: checkpoint 'cross_attention', config 'soft_prompt'"),
    ("cross_attention", "proj", "strategy: checkpoint 'enc', config 'proj'"),
])
def test_load_trainable_refuses_a_checkpoint_of_another_model(timelines, tokenizer, tmp_path,  # noqa: F811
                                                               integration, strategy, message):
    trained, _ = make_model(timelines, tokenizer, "cross_attention", "enc")
    save_checkpoint(trained, tmp_path / "last.ckpt")
    other, _ = make_model(timelines, tokenizer, integration, strategy)
    with pytest.raises(ValueError, match=re.escape(message)):
        other.load_trainable(tmp_path / "last.ckpt")
