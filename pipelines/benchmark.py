"""Inference cost against the text-prompt baseline: `python pipelines/benchmark.py` / `make benchmark`.

Build the methods (TP; cross-attention and soft prompt, each with and without the Perceiver) on the
configured LLM with fresh random encoders (weights do not change cost), measure FLOPs, prompt tokens,
latency and peak memory on real test windows at every history length (see `userllm.cost`), then
write the table (markdown and CSV), the plot and `metrics.json` to the run folder and to
`${result_dir}`, and print the table.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from common import encoder_config, ensure_data, finish_stage, log, set_threads
from userllm.cost import BenchmarkSettings, markdown_table, metrics, run_benchmark, with_ratios, write_report
from userllm.data.timelines import Timelines
from userllm.llm.load import load_llm
from userllm.tasks import Task


def settings(cfg: DictConfig) -> BenchmarkSettings:
    return BenchmarkSettings(
        history_lens=tuple(cfg.history_lens), methods=tuple(cfg.methods), examples=cfg.examples,
        repeats=cfg.repeats, new_tokens=cfg.new_tokens, autocast=getattr(torch, cfg.autocast) if cfg.autocast else None,
    )


def log_ideal(rows: list[dict]) -> None:
    """How close each method's FLOPs ratio comes to the token-count ideal (TP tokens / instruction tokens)."""
    for row in rows:
        if row["flops_vs_ideal"] is not None:
            log.info("history %d, %s: ideal ratio %.1fx; FLOPs ratio %.1fx (%.0f%% of the ideal), without attention "
                     "%.1fx (%.0f%%)", row["history_len"], row["method"], row["ideal_ratio"], row["flops_ratio"],
                     100 * row["flops_vs_ideal"], row["linear_flops_ratio"], 100 * row["linear_flops_vs_ideal"])


@hydra.main(config_path="../conf", config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    timelines = Timelines.load(ensure_data(cfg))
    task = Task(cfg.task.name, timelines, cfg.data.label_word)
    costs = run_benchmark(
        lambda: load_llm(cfg.llm.name_or_path, Path(cfg.llm.cache_dir)), task,
        encoder_config(cfg, timelines, max_len=max(cfg.history_lens)),
        perceiver=OmegaConf.to_container(cfg.perceiver, resolve=True),
        cross_attention=OmegaConf.to_container(cfg.cross_attention, resolve=True), settings=settings(cfg),
    )
    rows = with_ratios(costs)
    result_dir = Path(cfg.result_dir)
    written = write_report(rows, [Path(cfg.run_dir), result_dir])
    log.info("wrote %s", ", ".join(str(p) for p in written))
    finish_stage(cfg, metrics(rows), result_dir, table_prefixes=("cost/flops_ratio@", "cost/ideal_ratio@"))
    log_ideal(rows)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
