"""W&B, offline: one run per job, grouped, named and tagged for the dashboards, with the full config,
the namespaced metrics and, with `log_model`, the exported encoder as an artifact.

wandb 0.31 writes an offline run only as its transaction log (`run-<id>.wandb`: LevelDB log
framing around protobuf records; no config.yaml or wandb-summary.json), so that is what is read."""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from tests.conftest import run_pipeline

BLOCK = 32768  # LevelDB log block; every record chunk has a 7-byte header: crc32, length, type
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[pb.Record]:
    """The records of a `.wandb` transaction log, in order."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, chunks = 7, []  # after the file header: ":W&B", magic, version
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a header is padding
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def read_run(path: Path) -> dict:
    """What the dashboards will show of one offline run: its identity, final config and summary,
    and its artifacts."""
    run = {"config": {}, "summary": {}, "artifacts": defaultdict(set), "exit": None}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(name=record.run.display_name, group=record.run.run_group, tags=set(record.run.tags),
                       job_type=record.run.job_type)
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            updates = record.summary.update
            run["summary"].update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in updates})
        elif kind == "artifact":
            run["artifacts"][(record.artifact.type, record.artifact.name)] |= {e.path for e in record.artifact.manifest.contents}
        elif kind == "exit":
            run["exit"] = record.exit.exit_code
    return run


@pytest.fixture(scope="module")
def offline_runs(ml100k_processed, tmp_path_factory) -> list[dict]:
    """A two-job multirun of smoke pretraining with the default logger, offline, models logged."""
    output_dir = tmp_path_factory.mktemp("outputs")
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # artifact staging, not $HOME
            patch.setenv(variable, str(output_dir / variable.lower()))
        run_pipeline(
            "pretrain", "-m", "encoder.dim=8,16", "experiment=smoke", "logger.wandb.log_model=true",
            "+trainer.limit_train_batches=3", "trainer.max_epochs=1", f"paths.output_dir={output_dir}",
        )
    logs = sorted(output_dir.glob("wandb/offline-run-*/run-*.wandb"))
    return sorted((read_run(p) for p in logs), key=lambda run: run["config"]["encoder"]["dim"])


def test_each_job_is_its_own_run_grouped_named_and_tagged(offline_runs):
    assert len(offline_runs) == 2
    for run, dim in zip(offline_runs, (8, 16)):
        assert f"encoder.dim={dim}" in run["name"]
        assert run["group"] == "smoke/pretrain" and run["job_type"] == "pretrain"
        assert {"movielens_100k", "pretrain"} <= run["tags"]
        assert run["exit"] == 0  # closed at the end of its job, not left to the process exit


def test_runs_hold_the_resolved_config_and_namespaced_metrics(offline_runs):
    for run in offline_runs:
        config = run["config"]
        assert config["data"]["name"] == "movielens_100k" and config["data"]["history_len"] == 50
        assert {"paths", "trainer", "optim", "callbacks", "encoder"} <= set(config)
        assert "${" not in json.dumps(config)  # resolved, no interpolation left
        assert {"train/loss", "val/ndcg@10", "test/recall@10", "test/pop_recall@10"} <= set(run["summary"])


def test_log_model_uploads_the_exported_encoder(offline_runs):
    for run in offline_runs:
        assert run["artifacts"][("model", "encoder-movielens_100k")] == {"encoder.safetensors", "encoder.json"}
