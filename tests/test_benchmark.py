"""The cost benchmark on a tiny random Llama: FLOPs scale as the paper says, the report is complete."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from tests.conftest import run_pipeline
from tests.tiny_models import byte_level_tokenizer, tiny_llm
from userllm.cost import (
    METHODS, BenchmarkSettings, count_flops, metrics, peak_rss_mb, pick_users, run_benchmark, with_ratios, write_report,
)
from userllm.encoder.model import EncoderConfig
from userllm.llm.prompts import HISTORY_HEADER, INSTRUCTIONS
from userllm.tasks import Task

GENRES = ["Comedy", "Drama", "Horror"]
SHORT, LONG = 2, 8
LATENTS = 4


@pytest.fixture
def timelines(build_timelines):
    """Four users with 6, 8, 10 and 12 events."""
    return build_timelines(
        [(f"u{u}", (u + t) % 12, t, float(1 + t % 5), [GENRES[(u + t) % 3]])
         for u in range(4) for t in range(6 + 2 * u)]
    )


@pytest.fixture
def costs(timelines):
    """Every method at two history lengths on a tiny random Llama, with one torch thread: tiny ops on
    a shared machine otherwise spend their time waking threads up."""
    corpus = timelines.items["title"].to_list() + GENRES + list(INSTRUCTIONS.values()) + [HISTORY_HEADER, "rated 4"]
    tokenizer = byte_level_tokenizer(corpus * 3)
    features = ["item", "rating", "category"]
    encoder = EncoderConfig(
        vocab_sizes={f: timelines.vocab_size(f) for f in features}, features=features, dim=16, layers=1, heads=2,
        max_len=LONG,
    )
    settings = BenchmarkSettings(history_lens=(SHORT, LONG), examples=2, repeats=1, new_tokens=2, autocast=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run_benchmark(
            lambda: (tiny_llm(tokenizer), tokenizer), Task("favorite_genre", timelines), encoder,
            perceiver={"latents": LATENTS, "layers": 1, "heads": 2}, cross_attention={"every": 3}, settings=settings,
        )
    finally:
        torch.set_num_threads(threads)
    return results


def by_key(results: list) -> dict:
    return {(c.history_len, c.method): c for c in results}


def test_tp_flops_grow_with_history_while_perceiver_cross_attention_stays_flat(costs):
    cost = by_key(costs)
    assert cost[LONG, "text_prompt"].flops > 2 * cost[SHORT, "text_prompt"].flops
    assert cost[LONG, "cross_attention_perceiver"].flops < 1.05 * cost[SHORT, "cross_attention_perceiver"].flops
    assert cost[LONG, "text_prompt"].flops > 2 * cost[LONG, "cross_attention_perceiver"].flops
    assert all(c.attention_flops > 0 for c in cost.values())  # the fused CPU attention kernel is counted


def test_tokens_follow_each_method(costs):
    cost = by_key(costs)
    for n in (SHORT, LONG):
        instruction = cost[n, "cross_attention"].instruction_tokens
        assert cost[n, "cross_attention"].prompt_tokens == instruction
        assert cost[n, "cross_attention_perceiver"].user_tokens == LATENTS
        assert cost[n, "soft_prompt_perceiver"].prompt_tokens == instruction + LATENTS
        assert cost[n, "soft_prompt"].prompt_tokens == instruction + cost[n, "soft_prompt"].events
        assert cost[n, "text_prompt"].user_tokens == 0 and cost[n, "text_prompt"].prompt_tokens > instruction
    assert cost[LONG, "soft_prompt"].events == LONG  # the longest timelines are picked first


def test_ratio_rows_metrics_and_files(costs, tmp_path):
    rows = with_ratios(costs)
    assert [(r["history_len"], r["method"]) for r in rows] == [(n, m) for n in (SHORT, LONG) for m in METHODS]
    for row in rows:
        tp = next(r for r in rows if r["method"] == "text_prompt" and r["history_len"] == row["history_len"])
        assert row["flops_ratio"] == pytest.approx(tp["flops"] / row["flops"])
        assert row["linear_flops_ratio"] == pytest.approx(
            (tp["flops"] - tp["attention_flops"]) / (row["flops"] - row["attention_flops"])
        )
        assert row["ideal_ratio"] == pytest.approx(tp["prompt_tokens"] / row["instruction_tokens"])
        assert row["forward_ms"] > 0 and row["generate_ms"] > 0 and math.isfinite(row["peak_mb"])
        assert (row["flops_vs_ideal"] is None) == (row["method"] == "text_prompt")

    values = metrics(rows)
    ratio = "cost/flops_ratio@{}/cross_attention_perceiver"
    assert values[ratio.format(LONG)] > values[ratio.format(SHORT)]
    assert f"cost/ideal_ratio@{LONG}" in values and f"cost/peak_mb@{SHORT}/text_prompt" in values
    assert f"cost/flops_vs_ideal@{LONG}/text_prompt" not in values

    written = write_report(rows, [tmp_path / "run", tmp_path / "stable"])
    assert sorted(p.name for p in written) == ["cost.csv", "cost.csv", "cost.md", "cost.md", "cost.png", "cost.png"]
    table = (tmp_path / "stable" / "cost.csv").read_text().splitlines()
    assert len(list(csv.DictReader(table))) == len(rows) and "flops_ratio" in table[0]
    assert len((tmp_path / "run" / "cost.md").read_text().splitlines()) == len(rows) + 2
    assert (tmp_path / "run" / "cost.png").read_bytes().startswith(b"\x89PNG")


def test_users_with_enough_events_come_first(timelines):
    lengths = list(timelines.offsets[1:] - timelines.offsets[:-1])  # 6, 8, 10, 12 events
    assert pick_users(timelines, 9, 2) == [2, 3]
    assert pick_users(timelines, 13, 3) == sorted(range(4), key=lambda u: -lengths[u])[:3]


def test_fused_attention_flops_are_counted():
    """On CPU `scaled_dot_product_attention` runs a kernel torch's FLOP registry does not know."""
    query, key = torch.randn(1, 4, 32, 8), torch.randn(1, 2, 32, 8)
    with torch.inference_mode():
        total, attention = count_flops(
            lambda: torch.nn.functional.scaled_dot_product_attention(query, key, key, is_causal=True, enable_gqa=True)
        )
    assert total == attention == 2 * (2 * 4 * 32 * 32 * 8)  # scores and weighted values, whole matrices


def test_peak_memory_sees_a_temporary_allocation():
    assert peak_rss_mb(lambda: torch.ones(64, 2**20).sum()) > 128  # 256 MiB, freed before the call returns


def test_settings_are_checked():
    with pytest.raises(ValueError, match="must include 'text_prompt'"):
        BenchmarkSettings(methods=("cross_attention",))
    with pytest.raises(ValueError, match="unknown methods"):
        BenchmarkSettings(methods=("text_prompt", "lora"))
    with pytest.raises(ValueError, match="repeats=0"):
        BenchmarkSettings(repeats=0)


@pytest.mark.slow
def test_benchmark_pipeline_writes_every_file(ml100k_processed, tmp_path):
    """The entry point end to end on the real data, with a tiny LLM saved as a local model folder."""
    corpus = GENRES + list(INSTRUCTIONS.values()) + [HISTORY_HEADER]
    tokenizer = byte_level_tokenizer(corpus * 3)
    tiny_llm(tokenizer).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    run_pipeline(
        "benchmark", f"paths.output_dir={tmp_path / 'out'}", f"llm.name_or_path={tmp_path / 'llm'}",
        "experiment=smoke", "threads=1", "history_lens=[4,16]", "examples=1", "repeats=1", "new_tokens=2", timeout=600,
    )
    stable = tmp_path / "out" / "movielens_100k" / "benchmark"
    values = json.loads((stable / "metrics.json").read_text())
    ratio = "cost/flops_ratio@{}/cross_attention_perceiver"
    assert values[ratio.format(16)] > values[ratio.format(4)]
    assert {p.name for p in stable.iterdir()} >= {"cost.md", "cost.csv", "cost.png", "metrics.json"}
    assert list((tmp_path / "out" / "movielens_100k" / "runs" / "benchmark").glob("*/cost.png"))
