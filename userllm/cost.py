"""Inference cost of User-LLM against the text-prompt baseline (TP): the paper's efficiency claim.

Every method answers the same users' test windows, one example at a time, at every history length:

- **FLOPs**: one forward pass over the prompt (the prefill, with logits at the last position only,
  as `generate` computes them), counted by torch's `FlopCounterMode`. The user encoder, Perceiver and
  projector run inside that pass, so their cost is included (User-LLM could cache a user's tokens;
  counting them every time is the conservative choice). torch's registry lacks the fused CPU
  attention kernel, so it is counted with torch's own attention formula, which, like torch's counts
  of the GPU kernels, charges the whole score matrix and ignores causal masking.
- **prompt tokens**: positions the decoder stack processes: TP's instruction plus history text,
  User-LLM's instruction, plus the M user tokens of the soft prompt (cross-attention reads them as
  keys only). Prompts are exactly what `PromptCollator` builds for training and evaluation, chat
  template and its default system prompt included, for TP and User-LLM alike.
- **latency**: the median of `repeats` timed calls per example, after a warm-up call, of the forward
  pass and of greedy generation of exactly `new_tokens` tokens (no early stop, so every method
  decodes as much).
- **peak memory**: the resident set size (RSS) above its level before one generation call, sampled
  every millisecond by a thread. Freed heap pages are handed back to the OS first (glibc
  `malloc_trim`), so memory a larger, earlier call left free cannot hide this call's growth. It
  counts activations, KV cache and allocator overhead, not the weights (loaded before).
  `tracemalloc` would miss torch's allocations, which bypass Python's allocator.

The "ideal ratio" is TP's prompt tokens over the instruction tokens: what the FLOPs ratio would be
if cost were linear in tokens and the user context cost nothing. The FLOPs outside attention (the
linear layers) follow that model, so their ratio is the one to hold against the ideal: the encoder
and the cross-attention blocks keep it a little below. Attention is quadratic in the prompt, so at
long histories it lifts the total FLOPs ratio above the ideal.
"""

from __future__ import annotations

import ctypes
import io
import logging
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from userllm.data.collate import PromptCollator
from userllm.data.datamodule import TimelineDataset, window_examples
from userllm.data.timelines import Timelines
from userllm.encoder.model import EncoderConfig, UserEncoder
from userllm import tables
from userllm.io import atomic_write_bytes
from userllm.modules.contextualize import UserLLM
from userllm.tasks import Task

log = logging.getLogger(__name__)

BASELINE = "text_prompt"
METHODS: dict[str, tuple[str, bool]] = {
    BASELINE: ("text_prompt", False),
    "cross_attention": ("cross_attention", False),
    "cross_attention_perceiver": ("cross_attention", True),
    "soft_prompt": ("soft_prompt", False),
    "soft_prompt_perceiver": ("soft_prompt", True),
}
"""Benchmarked method -> (UserLLM integration, whether a Perceiver resamples the user tokens)."""

CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
"""The fused attention kernel `scaled_dot_product_attention` runs on CPU; missing from torch's FLOP registry."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """What to measure and how often; `autocast` is the CPU autocast dtype (None: fp32)."""

    history_lens: tuple[int, ...] = (50, 100, 200)
    methods: tuple[str, ...] = tuple(METHODS)
    examples: int = 2
    repeats: int = 3
    new_tokens: int = 8
    autocast: torch.dtype | None = torch.bfloat16

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}: expected some of {list(METHODS)}")
        if BASELINE not in self.methods:
            raise ValueError(f"methods must include {BASELINE!r}: every ratio is TP / method")
        for key in ("examples", "repeats", "new_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)}: must be at least 1")
        if not self.history_lens or min(self.history_lens) < 1:
            raise ValueError(f"history_lens={list(self.history_lens)}: need at least one length, each >= 1")


@dataclass
class Cost:
    """One method at one history length: means over the examples (of each example's median latency)."""

    history_len: int
    method: str
    events: float  # events actually in the windows (fewer than history_len for short timelines)
    user_tokens: float  # what the LLM reads of the user: events, or Perceiver latents (0 for TP)
    instruction_tokens: float  # the prompt without any history
    prompt_tokens: float  # positions the decoder stack processes
    flops: float  # one forward pass over the prompt, user encoder included
    attention_flops: float  # the part spent in fused attention kernels
    forward_ms: float
    generate_ms: float
    peak_mb: float


# -- measuring one call ------------------------------------------------------------------------------


def count_flops(fn: Callable[[], object]) -> tuple[int, int]:
    """Total and fused-attention FLOPs of one call of `fn`."""

    def attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    counter = FlopCounterMode(display=False, custom_mapping={CPU_ATTENTION: attention})
    with counter:
        fn()
    counts = counter.get_flop_counts().get("Global", {})
    return counter.get_total_flops(), sum(n for op, n in counts.items() if "attention" in str(op))


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall-clock milliseconds of `repeats` calls (the caller has warmed `fn` up)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only; elsewhere a no-op), so RSS growth is real growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_mb(fn: Callable[[], object], interval_s: float = 1e-3) -> float:
    """Peak resident memory above the starting level (MiB) during one call of `fn`, sampled by a thread."""
    process = psutil.Process()
    release_free_heap()
    start = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(interval_s):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak, process.memory_info().rss) - start) / 2**20


# -- the calls being measured -------------------------------------------------------------------------


def user_context(model: UserLLM, batch: dict) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, dict]:
    """User tokens (encoder, Perceiver, projector) and the LLM's prompt inputs, as `UserLLM.generate` builds them."""
    user = model.user_tokens(batch)
    return user, model.llm_inputs(batch["generation_inputs"], user)


def prefill(model: UserLLM, batch: dict) -> None:
    """One forward pass over the prompt: everything answering costs before the first new token."""
    user, inputs = user_context(model, batch)
    with model.conditioned(user):
        model.llm(**inputs, logits_to_keep=1, use_cache=False)


def generate(model: UserLLM, batch: dict, new_tokens: int) -> None:
    """Greedy generation of exactly `new_tokens` tokens (no early stop: every method decodes as much)."""
    user, inputs = user_context(model, batch)
    with model.conditioned(user):
        model.llm.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1,
            pad_token_id=model.tokenizer.pad_token_id,
        )


def measure_example(model: UserLLM, batch: dict, settings: BenchmarkSettings) -> dict[str, float]:
    """Tokens, FLOPs, latencies and peak memory of one example (a batch of one).

    The FLOP-counting pass runs the real kernels and doubles as the forward warm-up; the memory
    run doubles as the generation warm-up.
    """
    user, inputs = user_context(model, batch)
    forward = partial(prefill, model, batch)
    answer = partial(generate, model, batch, settings.new_tokens)
    flops, attention_flops = count_flops(forward)
    peak_mb = peak_rss_mb(answer)
    return {
        "user_tokens": 0.0 if user is None else float(user[1].sum()),
        "prompt_tokens": float(inputs["attention_mask"].sum()),
        "flops": float(flops),
        "attention_flops": float(attention_flops),
        "forward_ms": median_ms(forward, settings.repeats),
        "generate_ms": median_ms(answer, settings.repeats),
        "peak_mb": peak_mb,
    }


# -- the benchmark -------------------------------------------------------------------------------------


def pick_users(timelines: Timelines, min_events: int, count: int) -> list[int]:
    """The first `count` users with at least `min_events` events; if too few have that many, the
    longest other timelines fill up (their windows are shorter, which the `events` column shows)."""
    lengths = np.diff(timelines.offsets)
    return np.argsort(-np.minimum(lengths, min_events), kind="stable")[:count].tolist()


def history_windows(
    timelines: Timelines, users: Sequence[int], history_len: int, features: Sequence[str]
) -> list[dict]:
    """Dataset items of the chosen users' test windows (up to `history_len` events before the last one)."""
    chosen = set(users)
    examples = [e for e in window_examples(timelines, "test", history_len, stride=1) if e.user in chosen]
    dataset = TimelineDataset(timelines, examples, tuple(features))
    return [dataset[i] for i in range(len(dataset))]


def build_method(
    method: str, llm: nn.Module, tokenizer: Any, task: Task, encoder: EncoderConfig, perceiver: dict,
    cross_attention: dict,
) -> UserLLM:
    """`method` as a frozen UserLLM in eval mode, with a fresh random encoder: weights do not change cost.

    Frozen, because FlopCounterMode hooks the backward of any module input that requires grad, which
    fails under inference mode.
    """
    integration, resampled = METHODS[method]
    if resampled and perceiver.get("latents", 0) < 1:
        raise ValueError(f"method {method} needs perceiver.latents >= 1, got {perceiver.get('latents')}")
    return UserLLM(
        llm, tokenizer, task, integration=integration,
        encoder=UserEncoder(encoder) if integration != BASELINE else None, strategy="proj",
        perceiver=perceiver if resampled else None, cross_attention=cross_attention,
    ).eval().requires_grad_(False)


def run_benchmark(
    load_llm: Callable[[], tuple[nn.Module, Any]],
    task: Task,
    encoder: EncoderConfig,
    perceiver: dict,
    cross_attention: dict,
    settings: BenchmarkSettings,
) -> list[Cost]:
    """Measure every method at every history length; `load_llm` returns a fresh (LLM, tokenizer).

    A fresh LLM per method, because cross-attention is injected into the LLM in place. The encoder's
    `max_len` must cover the longest history length.
    """
    if encoder.max_len < max(settings.history_lens):
        raise ValueError(f"encoder max_len={encoder.max_len} < longest history length {max(settings.history_lens)}")
    users = pick_users(task.timelines, max(settings.history_lens) + 1, settings.examples)
    windows = {n: history_windows(task.timelines, users, n, encoder.features) for n in settings.history_lens}
    costs = []
    for method in settings.methods:
        llm, tokenizer = load_llm()
        model = build_method(method, llm, tokenizer, task, encoder, perceiver, cross_attention)
        autocast = torch.autocast("cpu", dtype=settings.autocast, enabled=settings.autocast is not None)
        with torch.inference_mode(), autocast:
            for history_len, items in windows.items():
                costs.append(measure_method(model, tokenizer, method, history_len, items, settings))
                log.info("%s @ %d: %s", method, history_len, costs[-1])
        del model, llm  # before the next load: two LLMs at once would only raise the baseline memory
    return costs


def measure_method(
    model: UserLLM, tokenizer: Any, method: str, history_len: int, items: list[dict], settings: BenchmarkSettings
) -> Cost:
    """One row: `model` on every window of one history length, averaged over the windows."""
    collate = PromptCollator(model.task, tokenizer, text_history=method == BASELINE, history_len=history_len)
    instruction = PromptCollator(model.task, tokenizer, text_history=False, history_len=history_len)
    rows = []
    for item in items:
        row = measure_example(model, collate([item]), settings)
        row["instruction_tokens"] = float(instruction([item])["generation_inputs"]["attention_mask"].sum())
        row["events"] = float(len(next(iter(item["history"].values()))))
        rows.append(row)
    return Cost(history_len=history_len, method=method, **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]})


# -- reporting -----------------------------------------------------------------------------------------

RATIOS = {
    "flops_ratio": "flops",
    "linear_flops_ratio": "linear_flops",
    "tokens_ratio": "prompt_tokens",
    "forward_ratio": "forward_ms",
    "generate_ratio": "generate_ms",
}
"""Ratio column -> the column it divides, TP / method (memory has none: a small delta is mostly noise)."""


def with_ratios(costs: Sequence[Cost]) -> list[dict[str, Any]]:
    """One flat row per cost, by history length then method, plus TP / method ratios, the ideal ratio
    and how close FLOPs come to it.

    `linear_flops` leaves attention out: what remains (the linear layers) grows linearly with the
    prompt, so its ratio is the one the token-count ideal predicts; attention's share, quadratic in
    the prompt, is what lifts the total ratio above the ideal at long histories.
    """
    order = sorted(costs, key=lambda c: (c.history_len, list(METHODS).index(c.method)))
    rows = [asdict(c) | {"linear_flops": c.flops - c.attention_flops} for c in order]
    baseline = {r["history_len"]: r for r in rows if r["method"] == BASELINE}
    for row in rows:
        tp = baseline[row["history_len"]]
        row |= {name: tp[key] / row[key] for name, key in RATIOS.items()}
        row["ideal_ratio"] = tp["prompt_tokens"] / row["instruction_tokens"]
        user_llm = row["method"] != BASELINE
        row["flops_vs_ideal"] = row["flops_ratio"] / row["ideal_ratio"] if user_llm else None
        row["linear_flops_vs_ideal"] = row["linear_flops_ratio"] / row["ideal_ratio"] if user_llm else None
    return rows


def metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Namespaced metrics: `cost/<column>@<history_len>/<method>`, and `cost/ideal_ratio@<history_len>`."""
    skip = {"history_len", "method", "ideal_ratio"}
    out = {}
    for row in rows:
        where = f"@{row['history_len']}/{row['method']}"
        out |= {f"cost/{k}{where}": float(v) for k, v in row.items() if k not in skip and v is not None}
        out[f"cost/ideal_ratio@{row['history_len']}"] = float(row["ideal_ratio"])
    return out


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


TABLE: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("history", lambda r: str(r["history_len"])),
    ("method", lambda r: r["method"]),
    ("events", lambda r: f"{r['events']:.0f}"),
    ("user tokens", lambda r: f"{r['user_tokens']:.0f}"),
    ("prompt tokens", lambda r: f"{r['prompt_tokens']:.0f}"),
    ("GFLOPs", lambda r: f"{r['flops'] / 1e9:.2f}"),
    ("attention %", lambda r: f"{100 * r['attention_flops'] / r['flops']:.0f}"),
    ("forward ms", lambda r: f"{r['forward_ms']:.0f}"),
    ("generate ms", lambda r: f"{r['generate_ms']:.0f}"),
    ("peak MiB", lambda r: f"{r['peak_mb']:.0f}"),
    ("FLOPs TP/x", lambda r: _times(r["flops_ratio"])),
    ("linear FLOPs TP/x", lambda r: _times(r["linear_flops_ratio"])),
    ("tokens TP/x", lambda r: _times(r["tokens_ratio"])),
    ("forward TP/x", lambda r: _times(r["forward_ratio"])),
    ("generate TP/x", lambda r: _times(r["generate_ratio"])),
    ("ideal TP/x", lambda r: _times(r["ideal_ratio"])),
    ("FLOPs / ideal", lambda r: _fraction(r["flops_vs_ideal"])),
    ("linear / ideal", lambda r: _fraction(r["linear_flops_vs_ideal"])),
]
"""Markdown columns: header and how to format it from a row of `with_ratios`."""


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table with the formatted columns of TABLE."""
    return tables.markdown_table([{header: fmt(row) for header, fmt in TABLE} for row in rows])


def plot_png(rows: Sequence[dict[str, Any]]) -> bytes:
    """FLOPs, forward and generation latency against history length, one line per method, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("flops", "FLOPs per example"), ("forward_ms", "forward pass (ms)"), ("generate_ms", "generation (ms)")]
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4.5))
    for axis, (key, title) in zip(axes, panels):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = sorted((r["history_len"], r[key]) for r in rows if r["method"] == method)
            axis.plot(*zip(*points), marker="o", label=method)
        axis.set(title=title, xlabel="history length (events)", yscale="log")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def write_report(rows: Sequence[dict[str, Any]], folders: Sequence[Path]) -> list[Path]:
    """`cost.md`, `cost.csv` and `cost.png` into every folder, atomically; returns the paths written."""
    files = {"cost.md": markdown_table(rows).encode(), "cost.csv": tables.csv_text(rows).encode(), "cost.png": plot_png(rows)}
    return [atomic_write_bytes(Path(folder) / name, data) for folder in folders for name, data in files.items()]
