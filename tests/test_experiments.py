"""Every experiment composes and resolves for every stage, every dataset for every stage, and the
cluster configs (FSDP trainer, SLURM launcher) build what they promise. Composition only: no GPU."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from tests.conftest import REPO

CONF = REPO / "conf"
STAGES = sorted(p.stem for p in CONF.glob("*.yaml"))  # one primary config per stage
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
PAPER = {"paper_movielens": "movielens_20m", "paper_amazon": "amazon_2018", "paper_google_local": "google_local"}


@pytest.fixture(autouse=True)
def hydra_config_unset() -> Iterator[None]:
    """Hydra's config is process-global: leave none behind for the tests that follow."""
    yield
    HydraConfig.instance().cfg = None


@pytest.fixture(scope="module", autouse=True)
def resolvers() -> Iterator[None]:
    """The config's own resolvers, registered by pipelines/common.py as the entry points import it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "pipelines"))
        importlib.import_module("common")
        yield


def compose_stage(stage: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The stage's config as its first job would see it: Hydra's own config set as the launcher and
    `run_job` would set it, then every value resolved, Hydra's included."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(stage, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.job.update(name=stage, num=0, id="0")
        cfg.hydra.runtime.output_dir = str(output_dir / "run")
    HydraConfig().set_config(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_for_every_stage(experiment, stage, tmp_path):
    cfg = compose_stage(stage, [f"experiment={experiment}", f"paths.output_dir={tmp_path}"], tmp_path)
    assert cfg.hydra.runtime.choices.experiment == experiment
    if experiment in PAPER:
        assert cfg.data.name == PAPER[experiment]
        assert (cfg.data.min_events, cfg.data.history_len) == (52, 50)
    if stage in ("pretrain", "finetune", "evaluate"):
        assert Path(cfg.run_dir) == tmp_path / "run"
        assert Path(cfg.result_dir).is_relative_to(tmp_path / cfg.data.name)  # the stable stage folder


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_evaluate_reads_the_checkpoints_finetune_writes(experiment, tmp_path):
    """evaluate composes finetune's config: the same overrides select the same model and its folder,
    and evaluate writes its results beside finetune's, never into them."""
    overrides = [f"experiment={experiment}", "task=next_item", "integration=soft_prompt", f"paths.output_dir={tmp_path}"]
    finetune = compose_stage("finetune", overrides, tmp_path)
    evaluate = compose_stage("evaluate", overrides, tmp_path)
    assert (evaluate.stage, evaluate.ckpt, finetune.test_after_fit) == ("evaluate", "last", True)
    assert evaluate.checkpoint_dir == finetune.checkpoint_dir == f"{finetune.result_dir}/checkpoints"
    assert Path(evaluate.result_dir) == tmp_path / finetune.data.name / "evaluate" / "next_item" / "soft_prompt"
    for key in ("data", "encoder", "llm", "integration", "perceiver", "strategy", "task", "trainer", "max_eval_users"):
        assert evaluate[key] == finetune[key], key


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_paper_experiments_build_a_gpu_trainer_and_the_paper_encoder(experiment, tmp_path):
    for stage in ("pretrain", "finetune"):
        cfg = compose_stage(stage, [f"experiment={experiment}", f"paths.output_dir={tmp_path}"], tmp_path)
        assert (cfg.encoder.dim, cfg.encoder.layers, cfg.encoder.heads) == (128, 6, 8)
        trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)  # valid Trainer arguments
        assert trainer.precision == "bf16-mixed"
        assert cfg.trainer.accelerator == "auto" and cfg.batch_size > 64


def test_paper_encoder_matches_the_encoder_group(tmp_path):
    """The experiments spell the paper size out (prepare has no encoder group to override)."""
    experiment = compose_stage("pretrain", ["experiment=paper_gpu", f"paths.output_dir={tmp_path}"], tmp_path)
    group = compose_stage("pretrain", ["encoder=paper", f"paths.output_dir={tmp_path}"], tmp_path)
    assert experiment.encoder == group.encoder


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_composes_for_every_stage(dataset, stage, tmp_path):
    cfg = compose_stage(stage, [f"data={dataset}", f"paths.output_dir={tmp_path}"], tmp_path)
    assert cfg.data.name == dataset
    assert Path(cfg.paths.processed_dir) == Path(cfg.paths.data_dir) / "processed" / dataset


def test_fsdp_trainer_wraps_decoder_layers_and_cross_attention(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from userllm.llm.cross_attention import CrossAttentionDecoderLayer

    cfg = compose_stage("finetune", ["trainer=fsdp", f"paths.output_dir={tmp_path}"], tmp_path)
    budget = OmegaConf.load(REPO / "conf" / "trainer" / "finetune.yaml")
    assert cfg.trainer.max_steps == budget.max_steps and cfg.trainer.precision == "bf16-mixed"  # inherited
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    wrapped = strategy.kwargs["auto_wrap_policy"]._module_classes
    assert {LlamaDecoderLayer, CrossAttentionDecoderLayer} <= set(wrapped)
    assert strategy.kwargs["use_orig_params"] is True


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_slurm_launcher_composes(stage, tmp_path):
    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"]
    cfg = compose_stage(stage, [*overrides, f"paths.output_dir={tmp_path}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.submitit_folder.startswith(str(tmp_path))


def test_encoder_search_is_a_seeded_optuna_multirun_on_validation_ndcg(tmp_path):
    cfg = compose_stage("pretrain", ["hparams_search=encoder_optuna", f"paths.output_dir={tmp_path}"], tmp_path)
    sweeper = cfg.hydra.sweeper
    assert str(cfg.hydra.mode).endswith("MULTIRUN") and sweeper._target_.endswith("OptunaSweeper")
    assert cfg.optimized_metric == "val/ndcg@10" and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed
    assert set(sweeper.params) == {"encoder.dim", "encoder.layers", "encoder.dropout", "optim.lr"}


def test_paper_ablation_grid_is_history_by_four_arms_on_a_small_budget(tmp_path):
    cfg = compose_stage("finetune", ["hparams_search=paper_ablations", f"paths.output_dir={tmp_path}"], tmp_path)
    grid = {key: values.split(",") for key, values in cfg.hydra.sweeper.params.items()}
    assert grid == {"data.history_len": ["50", "100", "200"],
                    "ablation": ["cross_attention", "cross_attention_no_perceiver", "soft_prompt",
                                 "soft_prompt_no_perceiver"]}
    assert cfg.trainer.max_steps <= 300 and cfg.pretrained_dir.endswith("pretrain_history200")


@pytest.mark.parametrize(("arm", "integration", "latents"), [
    ("cross_attention", "cross_attention", 16), ("cross_attention_no_perceiver", "cross_attention", 0),
    ("soft_prompt", "soft_prompt", 16), ("soft_prompt_no_perceiver", "soft_prompt", 0),
    ("text_prompt", "text_prompt", 16),
])
def test_each_ablation_arm_selects_its_integration_and_perceiver(arm, integration, latents, tmp_path):
    cfg = compose_stage("finetune", [f"ablation={arm}", f"paths.output_dir={tmp_path}"], tmp_path)
    assert cfg.integration.name == integration and cfg.perceiver.get("latents", 0) == latents
    assert cfg.strategy.name == "enc"
