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


def test_pipeline_gives_stage_two_arguments_to_stage_two_only():
    commands = stage_commands("pipeline", "ARGS=task=next_item")
    assert list(commands) == ["prepare", "pretrain", "finetune", "evaluate", "report"]
    for stage in ("prepare", "pretrain"):
        assert "task=" not in commands[stage] and "test_after_fit" not in commands[stage]
    assert commands["finetune"].endswith("test_after_fit=false task=next_item")
    assert commands["evaluate"].endswith("task=next_item")


def test_finetune_pretrains_a_missing_encoder_with_the_dataset_and_experiment_only():
    commands = stage_commands("finetune", "DATA=movielens_1m", "EXP=smoke", "ARGS=strategy=lora")
    assert commands["pretrain"].split()[1:] == ["pipelines/pretrain.py", "data=movielens_1m", "experiment=smoke"]
    assert commands["finetune"].split()[1:] == ["pipelines/finetune.py", "data=movielens_1m", "experiment=smoke",
                                                "strategy=lora"]
