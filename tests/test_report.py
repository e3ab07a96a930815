"""The results report: every stage's latest result as tables and valid PNGs, and for stages not run
yet the command that runs them; built from fake outputs trees (no training)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_pipeline
from userllm.report import write_report

DATASET = "movielens_100k"
OLD, NEW = "2026-01-01_00-00-00", "2026-02-01_00-00-00"
PRETRAIN = {
    "test/recall@1": 0.05, "test/recall@5": 0.125, "test/recall@10": 0.2, "test/recall@20": 0.3,
    "test/ndcg@10": 0.1, "test/mrr": 0.09, "test/pop_recall@1": 0.01, "test/pop_recall@5": 0.05,
    "test/pop_recall@10": 0.08, "test/pop_recall@20": 0.12, "test/pop_ndcg@10": 0.04, "test/pop_mrr": 0.03,
    "test/next_rating_accuracy": 0.4, "test/next_category_accuracy": 0.35, "train/events_per_s": 3141.0,
}
FINETUNE = {
    ("favorite_genre", "cross_attention"): {"test/accuracy": 0.65, "test/majority_accuracy": 0.5},
    ("favorite_genre", "text_prompt"): {"test/accuracy": 0.6, "test/majority_accuracy": 0.5},
    ("next_item", "soft_prompt"): {"test/recall@10": 0.1, "test/pop_recall@10": 0.05},
}
SWEEP = """job,ablation,data.history_len,test/accuracy,test/majority_accuracy,folder
0,cross_attention,50,0.61,0.5,0_a
1,soft_prompt_no_perceiver,50,0.58,0.5,1_b
2,cross_attention,100,0.63,0.52,2_c
3,soft_prompt_no_perceiver,100,,,3_d
"""
COST_MD = "| history | method | GFLOPs |\n|---|---|---|\n| 50 | text_prompt | 337.51 |\n"
COST_CSV = "history_len,method,flops\n50,text_prompt,337513250304.0\n50,cross_attention,11579769344.0\n"
PRETRAIN_LOG = """epoch,step,lr-AdamW/pg1,train/loss,val/ndcg@10,val/pop_ndcg@10
,0,0.001,,,
0,0,,8.0,,
0,1,,7.0,,
0,1,,,0.05,0.03
1,2,,6.0,,
1,3,,5.5,,
1,3,,,0.08,0.03
"""
FINETUNE_LOG = """epoch,step,train/loss,train/gate_mean,test/accuracy
0,9,4.0,0.02,
0,19,0.5,0.09,
0,29,0.4,0.12,
1,29,,,0.65
"""


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def assert_valid_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()


@pytest.fixture
def outputs(tmp_path) -> Path:
    """An outputs folder with a result of every stage; older sweep and run folders beside the newest."""
    stage = tmp_path / "outputs" / DATASET
    write(stage / "pretrain" / "metrics.json", json.dumps(PRETRAIN))
    for (task, integration), metrics in FINETUNE.items():
        write(stage / "finetune" / task / integration / "metrics.json", json.dumps(metrics))
    write(stage / "multirun" / "pretrain" / OLD / "summary.csv", "job,encoder.dim,val/ndcg@10,folder\n0,8,0.1,0_x\n")
    write(stage / "multirun" / "finetune" / NEW / "summary.csv", SWEEP)
    write(stage / "benchmark" / "cost.md", COST_MD)
    write(stage / "benchmark" / "cost.csv", COST_CSV)
    write(stage / "benchmark" / "cost.png", png_bytes())
    for when in (OLD, NEW):
        write(stage / "runs" / "pretrain" / when / "csv" / "version_0" / "metrics.csv", PRETRAIN_LOG)
    write(stage / "runs" / "finetune" / OLD / "csv" / "version_0" / "metrics.csv", FINETUNE_LOG)
    return tmp_path / "outputs"


def test_report_gathers_every_stage_with_tables_and_plots(outputs):
    report = write_report(outputs / DATASET, outputs / "report.md", DATASET)
    text = report.read_text()
    assert text.count("not run yet") == 1  # only the TP baseline of next_item is missing
    assert 'not run yet: `make finetune-tp DATA=movielens_100k ARGS="task=next_item"`' in text
    # encoder beside popularity, recall in order of k, then the accuracies and the throughput
    assert "| recall@10 | 0.2000 | 0.0800 | 2.50x |" in text
    rows = ["| recall@5 |", "| recall@10 |", "| recall@20 |", "| ndcg@10 |", "| mrr |", "| next_rating_accuracy | 0.4000 |  |  |"]
    assert [text.index(row) for row in rows] == sorted(text.index(row) for row in rows)
    assert "3,141 events/s" in text
    # finetune: TP first within its task, User-LLM against it
    assert text.index("| favorite_genre | text_prompt |") < text.index("| favorite_genre | cross_attention |")
    assert ("| favorite_genre | cross_attention | test/accuracy | 0.6500 | test/majority_accuracy | 0.5000 | +0.0500 |"
            in text)
    assert "| next_item | soft_prompt | test/recall@10 | 0.1000 | test/pop_recall@10 | 0.0500 |  |" in text
    # the newest sweep, unfinished job with empty cells, and its plot
    assert f"From `{DATASET}/multirun/finetune/{NEW}/summary.csv` (4 jobs)" in text
    assert "| 3 | soft_prompt_no_perceiver | 100 |  |  | 3_d |" in text
    assert "encoder.dim" not in text
    assert "](report/sweep_history.png)" in text
    # the benchmark's own table and its plot, copied
    assert COST_MD in text and "![inference cost](report/cost.png)" in text
    assert (outputs / "report" / "cost.png").read_bytes() == (outputs / DATASET / "benchmark" / "cost.png").read_bytes()
    # curves of the newest run of each stage
    assert f"runs/pretrain/{NEW}/csv/version_0/metrics.csv" in text
    assert "](report/pretrain_curves.png)" in text and "](report/finetune_curves.png)" in text
    pngs = sorted(p.name for p in (outputs / "report").iterdir())
    assert pngs == ["cost.png", "finetune_curves.png", "pretrain_curves.png", "sweep_history.png"]
    for name in pngs:
        assert_valid_png(outputs / "report" / name)


def test_stage2_rows_come_from_the_newer_of_finetune_and_evaluate(outputs):
    """evaluate's result where it is newer (or as new); finetune's where it tested after it; and
    where finetune trained without testing after the last evaluate, no score but the command."""
    stage = outputs / DATASET
    tested = {"test/accuracy": 0.7, "test/majority_accuracy": 0.5}
    for task, integration, finetune_time, evaluate_time in [("favorite_genre", "cross_attention", 1, 2),
                                                            ("favorite_genre", "text_prompt", 2, 1),
                                                            ("next_item", "soft_prompt", 2, 1)]:
        path = stage / "evaluate" / task / integration / "metrics.json"
        write(path, json.dumps(tested))
        os.utime(path, (1e9 + evaluate_time,) * 2)
        os.utime(stage / "finetune" / task / integration / "metrics.json", (1e9 + finetune_time,) * 2)
    untested = stage / "finetune" / "next_item" / "soft_prompt" / "metrics.json"
    write(untested, json.dumps({"train/loss": 1.0}))
    os.utime(untested, (1e9 + 2,) * 2)
    text = write_report(stage, outputs / "report.md", DATASET).read_text()
    assert ("| favorite_genre | cross_attention | test/accuracy | 0.7000 | test/majority_accuracy | 0.5000 | +0.1000 "
            "| evaluate |") in text
    assert "| favorite_genre | text_prompt | test/accuracy | 0.6000 | test/majority_accuracy | 0.5000 |  | finetune |" in text
    assert "| next_item | soft_prompt | test/recall@10 |  | test/pop_recall@10 |  |  | not tested |" in text
    assert 'not run yet: `make evaluate DATA=movielens_100k ARGS="task=next_item integration=soft_prompt"`' in text


def test_empty_outputs_tree_lists_the_command_for_every_stage(tmp_path):
    text = write_report(tmp_path / DATASET, tmp_path / "report.md", DATASET).read_text()
    for target in ("pretrain", "finetune", "finetune-tp", "sweep", "benchmark"):
        assert f"not run yet: `make {target} DATA={DATASET}`" in text
    assert "![" not in text and not (tmp_path / "report").exists()


def test_partial_results_fall_back_without_failing(tmp_path):
    """cost.csv without cost.md or plot, a sweep that did not vary history length, a run that has
    logged nothing but learning rates."""
    stage = tmp_path / DATASET
    write(stage / "benchmark" / "cost.csv", COST_CSV)
    write(stage / "multirun" / "pretrain" / OLD / "summary.csv", "job,encoder.dim,val/ndcg@10,folder\n0,8,0.1,0_x\n")
    write(stage / "runs" / "pretrain" / OLD / "csv" / "version_0" / "metrics.csv",
          "epoch,step,lr-AdamW/pg1,train/loss,val/ndcg@10\n,0,0.001,,\n")
    text = write_report(stage, tmp_path / "report.md", DATASET).read_text()
    assert "| 50 | cross_attention | 11579769344.0000 |" in text
    assert "| 0 | 8 | 0.1000 | 0_x |" in text
    assert f"`{DATASET}/runs/pretrain/{OLD}/csv/version_0/metrics.csv` holds no training metrics yet." in text
    assert "![" not in text


def test_make_report_writes_the_configured_file_and_says_where(tmp_path):
    result = run_pipeline("report", f"paths.output_dir={tmp_path}", timeout=120)
    assert f"report written to {tmp_path / 'report.md'}" in result.stdout
    assert "not run yet: `make pretrain DATA=movielens_100k`" in (tmp_path / "report.md").read_text()
