"""One markdown page with the latest result of every stage for a dataset, and its plots beside it.

It reads only what the stages leave under the dataset's stage folder (`outputs/<dataset>/`):

    pretrain/metrics.json                           the encoder beside the popularity baseline
    finetune/<task>/<integration>/metrics.json      User-LLM and TP beside the task's trivial baseline,
    evaluate/<task>/<integration>/metrics.json        as tested at the end of training or apart (the newer)
    multirun/<stage>/<time>/summary.csv             the newest sweep; quality against history length
    benchmark/cost.md (or cost.csv), cost.png       inference cost against TP
    runs/<stage>/<time>/csv/version_0/metrics.csv   training curves of the newest pretrain/finetune run

A piece that is missing becomes a "not run yet: `make <target>`" line, never an error: the page is
as much a to-do list as a results table, so a fresh checkout gets one too. Plots go to the folder
named like the report without its suffix (`report.md` -> `report/`), linked relatively, so the page
and its folder can be moved together.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl

from userllm.io import atomic_write_bytes, atomic_write_text
from userllm.tables import markdown_table
from userllm.tasks import HEADLINE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEXT_PROMPT = "text_prompt"
STAGE2 = ("evaluate", "finetune")
"""The stages that write stage-2 test results, evaluate first: it wins when both files are as new."""
HISTORY = "data.history_len"


ENCODER_ACCURACIES = ("test/next_rating_accuracy", "test/next_category_accuracy")
"""Encoder metrics without a popularity counterpart."""


class Panel(NamedTuple):
    """One subplot of training curves: the `ys` columns of a CSV log against its `x` column.

    Every y is averaged per x value, which turns pretraining's per-step `train/loss` into one point
    per epoch, beside the once-per-epoch validation metrics.
    """

    title: str
    x: str
    ys: tuple[str, ...]


@dataclass(frozen=True)
class Curves:
    """What to plot from one stage's CSV log, and what the reader should know about it."""

    stage: str
    panels: tuple[Panel, ...]
    note: str


CURVES = (
    Curves(
        "pretrain",
        (Panel("validation NDCG@10", "epoch", ("val/ndcg@10", "val/pop_ndcg@10")),
         Panel("training loss (mean per epoch)", "epoch", ("train/loss",))),
        note="The popularity baseline ranks the same way every epoch, so `val/pop_ndcg@10` is flat: "
             "the gap above it is what the encoder learnt.",
    ),
    Curves(
        "finetune",
        (Panel("training loss", "step", ("train/loss",)),
         Panel("cross-attention gates (mean |tanh|)", "step", ("train/gate_mean",))),
        note="`train/gate_mean` exists only with cross-attention; soft prompt and text prompt have no gates.",
    ),
)


@dataclass(frozen=True)
class Context:
    """Where the results are read from and the plots written to, and how hints name the dataset."""

    stage_dir: Path
    report_file: Path
    dataset: str

    def __post_init__(self) -> None:
        if not self.report_file.suffix:
            raise ValueError(f"report_file={self.report_file}: needs a suffix such as .md, since its plots go to "
                             "the folder of the same name without it")

    @property
    def figure_dir(self) -> Path:
        """Beside the report and named after it: one page and one folder to move or publish together."""
        return self.report_file.with_suffix("")

    def relative(self, path: Path) -> str:
        """`path` as seen from the report's folder, so links and sources survive moving both."""
        return Path(os.path.relpath(path, self.report_file.parent)).as_posix()

    def not_run(self, target: str, args: str = "") -> str:
        """The line standing in for a missing result: which command produces it."""
        return f"not run yet: `make {target} DATA={self.dataset}{args}`\n"

    def figure(self, figure: Figure, name: str, caption: str) -> str:
        """Write `figure` as `<figure_dir>/<name>` (atomically) and return its markdown image link."""
        buffer = io.BytesIO()
        figure.tight_layout()
        figure.savefig(buffer, format="png", dpi=110)
        pyplot().close(figure)
        return self.image(atomic_write_bytes(self.figure_dir / name, buffer.getvalue()), caption)

    def image(self, path: Path, caption: str) -> str:
        """A markdown image link to `path`, relative to the report."""
        return f"![{caption}]({self.relative(path)})\n"


# -- generic helpers ------------------------------------------------------------------------------------


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, imported on first use: reports are written on machines
    without a display, and choosing a backend at import would change it for a notebook user."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: Path) -> dict[str, float] | None:
    """A stage's metrics.json, or None where the stage has not written one."""
    return json.loads(path.read_text()) if path.exists() else None


def newest(paths: Sequence[Path], folder_depth: int) -> Path | None:
    """The path whose folder `folder_depth` levels up has the greatest name: run and sweep folders are
    named by their start time (`%Y-%m-%d_%H-%M-%S`), which sorts as it reads; mtimes change on copies."""
    return max(paths, key=lambda p: (p.parents[folder_depth].name, str(p)), default=None)


def mean_by(frame: pl.DataFrame, x: str, y: str) -> pl.DataFrame:
    """Mean of `y` per value of `x`, in order of `x`, over the rows that have both (CSV logs hold one
    metric family per row and leave the rest empty; a column with no value yet reads as text)."""
    if x not in frame.columns or y not in frame.columns:
        return pl.DataFrame({x: [], y: []})
    values = frame.select(x, pl.col(y).cast(pl.Float64, strict=False)).drop_nulls()
    return values.group_by(x).agg(pl.col(y).mean()).sort(x)


def ratio(value: Any, baseline: Any) -> str:
    """`value / baseline` as `2.5x`; empty where either is missing or the baseline is zero."""
    return f"{value / baseline:.2f}x" if isinstance(value, float) and isinstance(baseline, float) and baseline else ""


# -- sections -------------------------------------------------------------------------------------------


def encoder_section(ctx: Context) -> str:
    """Stage 1 on test: ranking metrics beside the popularity baseline, next-feature accuracies, speed."""
    text = "## User encoder (stage 1: pretrain)\n\n"
    path = ctx.stage_dir / "pretrain" / "metrics.json"
    metrics = read_metrics(path)
    if metrics is None:
        return text + ctx.not_run("pretrain")
    text += f"Test split, from `{ctx.relative(path)}`; popularity ranks the most frequent unseen items.\n\n"
    text += markdown_table(encoder_rows(metrics))
    if "train/events_per_s" in metrics:
        text += f"\nTraining throughput: {metrics['train/events_per_s']:,.0f} events/s.\n"
    return text


def encoder_rows(metrics: dict[str, float]) -> list[dict[str, Any]]:
    """Recall@k in order of k, NDCG@10, MRR (each with the popularity baseline), then the accuracies."""
    recalls = sorted((k for k in metrics if re.fullmatch(r"test/recall@\d+", k)), key=lambda k: int(k.split("@")[1]))
    rows = []
    for name in [*recalls, "test/ndcg@10", "test/mrr", *ENCODER_ACCURACIES]:
        if name in metrics:
            popularity = metrics.get(name.replace("test/", "test/pop_"))
            rows.append({"metric": name.removeprefix("test/"), "encoder": metrics[name], "popularity": popularity,
                         "encoder / popularity": ratio(metrics[name], popularity)})
    return rows


def finetune_section(ctx: Context) -> str:
    """Stage 2: every task x integration's headline metric beside its trivial baseline and TP."""
    text = "## User-LLM against baselines (stage 2: finetune, evaluate)\n\n"
    keys = sorted({(p.parent.parent.name, p.parent.name)
                   for stage in STAGE2 for p in (ctx.stage_dir / stage).glob("*/*/metrics.json")})
    results = {key: result for key in keys if (result := stage2_result(ctx.stage_dir, *key)) is not None}
    if not results:
        return text + ctx.not_run("finetune") + "\n" + ctx.not_run("finetune-tp")
    text += (f"Test split, from `{ctx.relative(ctx.stage_dir)}/<stage>/<task>/<integration>/metrics.json` of the "
             "stage named in `tested by`; `vs TP` is the difference to the text-prompt baseline on the same task.\n\n")
    text += markdown_table(finetune_rows(results))
    untested = [key for key, (_, metrics) in results.items() if not is_tested(metrics)]
    text += "".join("\n" + ctx.not_run("evaluate", f' ARGS="task={t} integration={i}"') for t, i in untested)
    missing_tp = sorted({task for task, _ in results} - {task for task, i in results if i == TEXT_PROMPT})
    return text + "".join("\n" + ctx.not_run("finetune-tp", f' ARGS="task={task}"') for task in missing_tp)


def stage2_result(stage_dir: Path, task: str, integration: str) -> tuple[str, dict[str, float]] | None:
    """The newest metrics.json of one task x integration among the stages that test stage 2, and
    that stage's name; None where neither wrote one.

    finetune tests at the end of training (unless `test_after_fit=false`), evaluate tests a saved
    checkpoint apart. The newer file (by modification time: these stable folders have no run
    timestamp in their names) describes the newer model, evaluate's on a tie: an evaluate
    result older than the last finetune run scored a model that has since been retrained, so a
    finetune that did not test stands for "not tested yet" (see `is_tested`), not for the old score.
    """
    paths = [stage_dir / stage / task / integration / "metrics.json" for stage in STAGE2]
    newest = max((p for p in paths if p.exists()), key=lambda p: p.stat().st_mtime, default=None)  # first on a tie
    return None if newest is None else (newest.parent.parent.parent.name, read_metrics(newest))


def is_tested(metrics: dict[str, float]) -> bool:
    """Whether a stage-2 metrics.json holds test metrics (finetune's holds train/val ones without a test)."""
    return any(name.startswith("test/") for name in metrics)


def finetune_rows(results: dict[tuple[str, str], tuple[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per (task, integration); within a task TP first, so User-LLM rows read against it."""
    order = sorted(results, key=lambda key: (key[0], key[1] != TEXT_PROMPT, key[1]))
    rows = []
    for task, integration in order:
        stage, metrics = results[(task, integration)]
        metric, baseline = headline(task, metrics)
        value, tp = metrics.get(metric), results.get((task, TEXT_PROMPT), ("", {}))[1].get(metric)
        vs_tp = f"{value - tp:+.4f}" if integration != TEXT_PROMPT and value is not None and tp is not None else ""
        rows.append({"task": task, "integration": integration, "metric": metric, "value": value,
                     "trivial baseline": baseline or "", "baseline value": metrics.get(baseline or ""),
                     "vs TP": vs_tp, "tested by": stage if is_tested(metrics) else "not tested"})
    return rows


def headline(task: str, metrics: dict[str, float]) -> tuple[str, str | None]:
    """The task's headline metric and baseline; for a task this module does not know, its first test metric."""
    return HEADLINE.get(task) or (min((k for k in metrics if k.startswith("test/")), default=""), None)


def sweep_section(ctx: Context) -> str:
    """The newest sweep's table, and quality against history length where the sweep varied both."""
    text = "## Newest sweep\n\n"
    path = newest(list(ctx.stage_dir.glob("multirun/*/*/summary.csv")), folder_depth=0)
    if path is None:
        return text + ctx.not_run("sweep")
    frame = pl.read_csv(path, infer_schema_length=None)
    text += f"From `{ctx.relative(path)}` ({frame.height} jobs).\n\n" + markdown_table(frame.to_dicts())
    quality = sweep_quality(frame.columns)
    if quality is None or HISTORY not in frame.columns:
        return text
    figure = plot_sweep(frame, *quality)
    return text + "\n" + ctx.figure(figure, "sweep_history.png", f"{quality[0]} against history length")


def sweep_quality(columns: Sequence[str]) -> tuple[str, str | None] | None:
    """The first headline metric (and its baseline) among a summary's columns, or None."""
    return next(((m, b) for m, b in HEADLINE.values() if m in columns), None)


def override_columns(frame: pl.DataFrame) -> list[str]:
    """The overrides a summary varied: every column but the job number, its folder and the metrics
    (whose names hold a `/`, as in `test/accuracy`)."""
    return [c for c in frame.columns if c not in ("job", "folder") and "/" not in c]


def plot_sweep(frame: pl.DataFrame, metric: str, baseline: str | None) -> Figure:
    """`metric` against history length, one line per combination of the other overrides (the
    ablation arm, or integration and Perceiver, ...; TP too where the sweep ran it), and the
    trivial baseline dashed."""
    series = [c for c in override_columns(frame) if c != HISTORY]
    groups = frame.group_by(series, maintain_order=True) if series else [((), frame)]
    figure, axis = pyplot().subplots(figsize=(7, 4.5))
    for key, group in groups:
        points = mean_by(group, HISTORY, metric)
        label = ", ".join(f"{c}={v}" for c, v in zip(series, key)) or metric
        axis.plot(points[HISTORY], points[metric], marker="o", label=label)
    if baseline in frame.columns:
        points = mean_by(frame, HISTORY, baseline)
        axis.plot(points[HISTORY], points[baseline], linestyle="--", color="gray", label=baseline)
    axis.set(xlabel="history length (events)", ylabel=metric, title=f"{metric} against history length",
             xticks=frame[HISTORY].drop_nulls().unique().sort().to_list())
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small")
    return figure


def cost_section(ctx: Context) -> str:
    """The benchmark's cost table and plot (copied beside the report, so the page stands alone)."""
    text = "## Inference cost against the text prompt\n\n"
    folder = ctx.stage_dir / "benchmark"
    table = cost_table(folder)
    if table is None:
        return text + ctx.not_run("benchmark")
    text += f"From `{ctx.relative(folder)}`; `TP/x` columns are text prompt / method.\n\n" + table
    plot = folder / "cost.png"
    if plot.exists():
        text += "\n" + ctx.image(atomic_write_bytes(ctx.figure_dir / "cost.png", plot.read_bytes()), "inference cost")
    return text


def cost_table(folder: Path) -> str | None:
    """`cost.md` as the benchmark formatted it, else `cost.csv` as a plain table, else None."""
    if (folder / "cost.md").exists():
        return (folder / "cost.md").read_text()
    if (folder / "cost.csv").exists():
        return markdown_table(pl.read_csv(folder / "cost.csv", infer_schema_length=None).to_dicts())
    return None


def curves_section(ctx: Context) -> str:
    """Training curves of the newest run of each trained stage."""
    return "## Training curves\n\n" + "\n".join(stage_curves(ctx, curves) for curves in CURVES)


def stage_curves(ctx: Context, curves: Curves) -> str:
    """One stage's curves from its newest run folder's CSV log, or why there are none."""
    text = f"### {curves.stage}\n\n"
    path = newest(list((ctx.stage_dir / "runs" / curves.stage).glob("*/csv/version_0/metrics.csv")), folder_depth=2)
    if path is None:
        return text + ctx.not_run(curves.stage)
    figure = plot_curves(pl.read_csv(path, infer_schema_length=None), curves)
    if figure is None:
        return text + f"`{ctx.relative(path)}` holds no training metrics yet.\n"
    text += f"From `{ctx.relative(path)}`. {curves.note}\n\n"
    return text + ctx.figure(figure, f"{curves.stage}_curves.png", f"{curves.stage} training curves")


def logged(frame: pl.DataFrame, x: str, ys: Sequence[str]) -> list[tuple[str, pl.DataFrame]]:
    """The `ys` the log holds values of, each as its mean per `x` (a run that has not validated yet
    has no `val/*`; TP has no gates)."""
    lines = [(y, mean_by(frame, x, y)) for y in ys]
    return [(y, points) for y, points in lines if points.height]


def plot_curves(frame: pl.DataFrame, curves: Curves) -> Figure | None:
    """One panel per configured panel that has data, each y averaged per x; None if none has any."""
    panels = [(title, x, lines) for title, x, ys in curves.panels if (lines := logged(frame, x, ys))]
    if not panels:
        return None
    figure, axes = pyplot().subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (title, x, lines) in zip(axes[0], panels):
        for y, points in lines:
            style = "--" if "/pop_" in y else "-"  # baselines dashed, as in the sweep plot
            axis.plot(points[x], points[y], style, marker="." if points.height < 50 else None, label=y)
        axis.set(title=title, xlabel=x)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    return figure


# -- the report -----------------------------------------------------------------------------------------

SECTIONS = (encoder_section, finetune_section, sweep_section, cost_section, curves_section)


def write_report(stage_dir: Path, report_file: Path, dataset: str) -> Path:
    """Write the report for the results under `stage_dir` to `report_file` (atomically), its plots
    to the folder of the same name beside it; return the report's path."""
    ctx = Context(Path(stage_dir), Path(report_file), dataset)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# userllm results: {dataset}\n\nThe latest result of every stage under "
              f"`{ctx.relative(ctx.stage_dir)}`, gathered {generated}.\n")
    return atomic_write_text(ctx.report_file, "\n".join([header, *(section(ctx) for section in SECTIONS)]))
