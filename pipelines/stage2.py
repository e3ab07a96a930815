"""Stage 2 as the finetune and evaluate entry points share it: build the model from the config, test it.

Evaluate rebuilds the model finetune trained and loads only its trainable parameters, so both must
build it the same way, down to the order random numbers are drawn in (a frozen random encoder is
not in the checkpoint): one builder, used by both, guarantees that. One test routine makes their
metrics, baselines and files the same, so either stage's result stands for the other's.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from common import encoder_config, ensure_data, finish_stage, log
from userllm.data.collate import PromptCollator
from userllm.data.datamodule import TimelineDataModule, window_examples
from userllm.data.timelines import Timelines
from userllm.encoder.export import load_encoder
from userllm.encoder.model import UserEncoder
from userllm.io import atomic_write_text
from userllm.llm.load import load_llm
from userllm.modules.contextualize import UserLLM
from userllm.report import stage2_result
from userllm.tasks import HEADLINE, Task


def build_encoder(cfg: DictConfig, timelines: Timelines) -> UserEncoder | None:
    """The stage-1 encoder (weights only), or a random one for the `encoder.init=random` ablation."""
    if cfg.integration.name == "text_prompt":
        return None
    if cfg.encoder.init == "pretrained":
        return load_encoder(Path(cfg.pretrained_dir))
    if cfg.encoder.init != "random":
        raise ValueError(f"encoder.init={cfg.encoder.init!r}: expected 'pretrained' or 'random'")
    return UserEncoder(encoder_config(cfg, timelines))


def majority_label(task: Task, history_len: int, stride: int) -> str | None:
    """The most common favourite label over the training windows: the trivial baseline's answer."""
    if task.name != "favorite_genre":
        return None
    labels = Counter(task.favorite_label(e.start, e.end) for e in window_examples(task.timelines, "train", history_len, stride))
    return labels.most_common(1)[0][0]


def build_stage2(cfg: DictConfig) -> tuple[UserLLM, TimelineDataModule]:
    """Seed, then data, task, LLM, encoder and the User-LLM module, as the config describes them."""
    L.seed_everything(cfg.seed, workers=True)
    processed = ensure_data(cfg)
    timelines = Timelines.load(processed)
    task = Task(cfg.task.name, timelines, cfg.data.label_word)
    llm, tokenizer = load_llm(cfg.llm.name_or_path, Path(cfg.llm.cache_dir))
    encoder = build_encoder(cfg, timelines)
    features = list(encoder.config.features) if encoder is not None else ["item"]
    collator = PromptCollator(
        task, tokenizer, text_history=cfg.integration.name == "text_prompt",
        history_len=cfg.data.history_len, max_target_tokens=cfg.max_target_tokens, padding_side=cfg.padding_side,
    )
    datamodule = TimelineDataModule(
        processed, collator_factory=lambda _: collator, history_len=cfg.data.history_len, stride=cfg.stride,
        features=features, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        num_workers=cfg.num_workers, max_eval_users=cfg.max_eval_users, seed=cfg.seed,
    )
    model = UserLLM(
        llm, tokenizer, task, integration=cfg.integration.name, encoder=encoder, strategy=cfg.strategy.name,
        perceiver=OmegaConf.to_container(cfg.perceiver, resolve=True),
        cross_attention=OmegaConf.to_container(cfg.integration, resolve=True),
        lora=OmegaConf.to_container(cfg.strategy.lora, resolve=True) if cfg.strategy.lora else None,
        num_beams=cfg.task.num_beams, max_new_tokens=cfg.task.max_new_tokens,
        exclude_seen=cfg.task.get("exclude_seen", True),  # only next_item uses it
        popularity=torch.as_tensor(timelines.training_item_counts(), dtype=torch.float32),
        majority_label=majority_label(task, cfg.data.history_len, cfg.stride),
        sample_generations=cfg.sample_generations, **OmegaConf.to_container(cfg.optim, resolve=True),
    )
    log.info("trainable parameters: %d", model.num_trainable())
    return model, datamodule


def run_test(cfg: DictConfig, trainer: L.Trainer, model: UserLLM, datamodule: TimelineDataModule) -> float:
    """Test on every user's held-out window (or `max_eval_users`), write metrics.json and the sampled
    generations, print the result beside the baselines; return the metric a sweeper optimises."""
    metrics = trainer.test(model, datamodule)[0]
    log_generations(trainer, model.generations, Path(cfg.run_dir))
    finish_stage(cfg, metrics, Path(cfg.result_dir), table_prefixes=("test/",))
    print_comparison(cfg, metrics)
    return metrics.get(cfg.optimized_metric or HEADLINE[cfg.task.name][0], float("nan"))


def log_generations(trainer: L.Trainer, rows: list[dict], run_dir: Path) -> None:
    """Sampled prompt/target/output rows: a JSON-lines file in the run folder and a W&B table."""
    atomic_write_text(run_dir / "generations.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    for logger in trainer.loggers:
        if hasattr(logger, "log_table") and rows:
            logger.log_table("test/generations", columns=list(rows[0]), data=[list(r.values()) for r in rows])


def print_comparison(cfg: DictConfig, metrics: dict[str, float]) -> None:
    """This run beside the text-prompt baseline's latest result for the same task, when there is one."""
    main_metric, baseline = HEADLINE[cfg.task.name]
    rows = [(f"{cfg.integration.name} ({cfg.strategy.name})", metrics.get(main_metric))]
    if baseline in metrics:
        rows.append(("trivial baseline", metrics[baseline]))
    text_prompt = stage2_result(Path(cfg.paths.stage_dir), cfg.task.name, "text_prompt")
    if cfg.integration.name != "text_prompt" and text_prompt is not None:
        rows.append((f"text prompt (latest {text_prompt[0]})", text_prompt[1].get(main_metric)))
    log.info("%s on %s, %s:\n%s", cfg.task.name, cfg.data.name, main_metric,
             "\n".join(f"  {name:<32} {value:.4f}" for name, value in rows if value is not None))
