"""The Makefile's chained targets hand each stage its own overrides.

`make -n` prints the commands without running them (recursive `$(MAKE)` lines still run, in the
same dry-run mode), so these tests see what a fresh machine would execute in seconds.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def stage_commands(*arguments: str) -> dict[str, str]:
    """`pipelines/<stage>.py` -> its command line, as `make -n` would run them."""
    # No encoder yet (as on a fresh machine); STAMP: the install is not what is tested here.
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *arguments, "ENCODER=/nonexistent/encoder.safetensors",
         f"STAMP={ROOT / 'Makefile'}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    commands = {}
    for line in done.stdout.splitlines():
        for word in line.split():
            if word.startswith("pipelines/") and word.endswith(".py"):
                commands[Path(word).stem] = line
    return commands


def test_pipeline_gives_each_stage_the_arguments_it_takes():
    commands = stage_commands("pipeline", "ARGS=task=next_item data.history_len=100 encoder.dim=32")
    assert list(commands) == ["prepare", "pretrain", "finetune", "evaluate", "report"]
    assert commands["prepare"].split()[2:] == ["data=movielens_100k", "data.history_len=100"]
    assert commands["pretrain"].split()[2:] == ["data=movielens_100k", "data.history_len=100", "encoder.dim=32"]
    assert commands["finetune"].split()[2:] == ["data=movielens_100k", "test_after_fit=false", "task=next_item",
                                                "data.history_len=100", "encoder.dim=32"]
    assert commands["evaluate"].split()[2:] == ["data=movielens_100k", "task=next_item", "data.history_len=100",
                                                "encoder.dim=32"]


def test_finetune_pretrains_a_missing_encoder_without_stage_two_arguments():
    commands = stage_commands("finetune", "DATA=movielens_1m", "EXP=smoke", "ARGS=strategy=lora encoder=paper")
    assert commands["pretrain"].split()[2:] == ["data=movielens_1m", "experiment=smoke", "encoder=paper"]
    assert commands["finetune"].split()[2:] == ["data=movielens_1m", "experiment=smoke", "strategy=lora",
                                                "encoder=paper"]
