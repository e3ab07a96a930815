"""Hydra multiruns: one folder per job holding that job's results, a summary table at the end, the
Optuna search over the encoder, and the stable stage folder left to single runs."""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from tests.conftest import REPO, run_pipeline

TINY = ["experiment=smoke", "logger=none", "+trainer.limit_train_batches=3", "trainer.max_epochs=1"]


@pytest.fixture(autouse=True)
def hydra_config_unset() -> Iterator[None]:
    """Hydra's config is process-global: leave none behind for the tests that follow."""
    yield
    HydraConfig.instance().cfg = None


@pytest.fixture
def pipelines(monkeypatch):
    """pipelines/ on the path as the entry points see it (`common` registers the config resolvers)."""
    monkeypatch.syspath_prepend(str(REPO / "pipelines"))
    return importlib.import_module("common"), importlib.import_module("collect")


def sweep_dir(output_dir: Path, stage: str) -> Path:
    (folder,) = (output_dir / "movielens_100k" / "multirun" / stage).iterdir()
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("mode", ["RUN", "MULTIRUN"])
def test_result_folders_are_stable_in_a_run_and_per_job_in_a_multirun(pipelines, mode, tmp_path):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("finetune", overrides=[f"hydra.mode={mode}", f"paths.output_dir={tmp_path}"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
    HydraConfig().set_config(cfg)
    stable = tmp_path / "movielens_100k" / "finetune" / "favorite_genre" / "cross_attention"
    expected = tmp_path / "job" if mode == "MULTIRUN" else stable
    assert Path(cfg.result_dir) == expected
    assert Path(cfg.checkpoint_dir) == expected / "checkpoints"
    assert Path(cfg.pretrained_dir) == tmp_path / "movielens_100k" / "pretrain"  # reading stays stable


def test_summary_lists_varied_overrides_and_chosen_metrics(pipelines, tmp_path):
    _, collect = pipelines
    jobs = [(0, ["encoder.dim=8", "seed=1"], {"test/recall@5": 0.1, "test/recall@10": 0.2, "val/ndcg@10": 0.3}),
            (1, ["encoder.dim=16", "seed=1"], {"test/recall@5": 0.4, "test/recall@10": 0.5, "val/ndcg@10": 0.6}),
            (2, ["encoder.dim=32", "seed=1"], None)]  # died before writing metrics.json
    for number, overrides, metrics in jobs:
        folder = tmp_path / f"{number}_job" / ".hydra"
        folder.mkdir(parents=True)
        (folder / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (folder / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": number}}}))
        if metrics:
            (folder.parent / "metrics.json").write_text(json.dumps(metrics))
    collect.main([str(tmp_path), "--metrics", "test/recall@*"])
    rows = read_csv(tmp_path / "summary.csv")
    assert list(rows[0]) == ["job", "encoder.dim", "test/recall@5", "test/recall@10", "folder"]
    assert [(r["job"], r["encoder.dim"], r["test/recall@10"]) for r in rows] == [
        ("0", "8", "0.2"), ("1", "16", "0.5"), ("2", "32", "")]
    assert "| 1 | 16 | 0.4000 | 0.5000 | 1_job |" in (tmp_path / "summary.md").read_text()


def test_multirun_keeps_each_jobs_results_and_writes_a_summary(ml100k_processed, tmp_path):
    run_pipeline("pretrain", "-m", "encoder.dim=8,16", *TINY, f"paths.output_dir={tmp_path}")
    sweep = sweep_dir(tmp_path, "pretrain")
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    for job, dim in zip(jobs, (8, 16)):
        assert {"test/recall@10", "val/ndcg@10"} <= set(json.loads((job / "metrics.json").read_text()))
        assert json.loads((job / "encoder.json").read_text())["dim"] == dim
        assert (job / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "movielens_100k" / "pretrain").exists()  # the stable folder is for single runs
    rows = read_csv(sweep / "summary.csv")
    assert [r["encoder.dim"] for r in rows] == ["8", "16"]
    assert all(float(r["test/recall@10"]) >= 0 for r in rows)
    assert (sweep / "summary.md").read_text().count("\n| ") == 3  # header and two jobs


def test_optuna_search_runs_trials_and_writes_the_best(ml100k_processed, tmp_path):
    # Size fixed on the command line (Optuna drops it from the search): dropout and lr are searched.
    run_pipeline("pretrain", "hparams_search=encoder_optuna", "hydra.sweeper.n_trials=2", "encoder.dim=16",
                 "encoder.layers=1", *TINY, f"paths.output_dir={tmp_path}")
    sweep = sweep_dir(tmp_path, "pretrain")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"encoder.dropout", "optim.lr"}
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 2 and max(float(r["val/ndcg@10"]) for r in rows) == pytest.approx(results["best_value"])
