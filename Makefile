# userllm: every target installs what it needs into .venv on first use.
#   make pipeline          prepare -> pretrain -> finetune -> evaluate -> report on the defaults
#                          (MovieLens-100K, SmolLM2-135M)
#   make test              the test suite
# Pass Hydra overrides with ARGS="...", an experiment with EXP=<name>, a dataset with DATA=<name>.

PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_VERSION := 2.13.0

DATA ?= movielens_100k
EXP ?=
ARGS ?=
OVERRIDES := data=$(DATA) $(if $(EXP),experiment=$(EXP)) $(ARGS)
PYTEST_ARGS ?=

ENCODER := outputs/$(DATA)/pretrain/encoder.safetensors
# The overrides of ARGS that earlier stages share, for targets that run those stages first.
DATA_ARGS = $(filter data.%,$(ARGS))
ENCODER_ARGS = $(filter data.% encoder=% encoder.%,$(ARGS))

.PHONY: install data pretrain embed finetune finetune-tp evaluate pipeline sweep benchmark benchmark-data report test test-fast clean-venv

install: $(STAMP)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

data: $(STAMP)
	$(PY) pipelines/prepare.py $(OVERRIDES)

pretrain: $(STAMP)
	$(PY) pipelines/pretrain.py $(OVERRIDES)

embed: $(STAMP)
	$(PY) pipelines/embed.py $(OVERRIDES)

# Stage 2 reads the stage-1 encoder; pretrain first if there is none yet, with the data and encoder
# overrides of ARGS only (a sub-make would otherwise inherit stage 2's, which pretraining rejects).
finetune: $(STAMP)
	test -f $(ENCODER) || $(MAKE) pretrain DATA=$(DATA) EXP=$(EXP) ARGS="$(ENCODER_ARGS)"
	$(PY) pipelines/finetune.py $(OVERRIDES)

# The text-prompt baseline on the same task and wall-clock budget; the LLM must learn the task, so
# it trains LoRA adapters (with the LLM frozen it has nothing to train: the zero-shot ablation).
finetune-tp: $(STAMP)
	$(PY) pipelines/finetune.py integration=text_prompt strategy=lora $(OVERRIDES)

# Stage 2's test apart from training: finetune's checkpoint (ARGS="ckpt=best", "max_eval_users=150")
# rebuilt from the same config; pass the overrides finetune ran with, they select the same model.
evaluate: $(STAMP)
	$(PY) pipelines/evaluate.py $(OVERRIDES)

# prepare -> pretrain (if no encoder yet) -> finetune (trains only) -> evaluate (tests against the
# baselines), each reusing what the earlier ones produced; ends with the report of every stage's results.
# ARGS go to finetune and evaluate; the data step gets their data.* overrides, pretraining (see
# finetune) their data and encoder ones.
pipeline: $(STAMP)
	$(MAKE) data DATA=$(DATA) EXP=$(EXP) ARGS="$(DATA_ARGS)"
	$(MAKE) finetune DATA=$(DATA) EXP=$(EXP) ARGS="test_after_fit=false $(ARGS)"
	$(MAKE) evaluate DATA=$(DATA) EXP=$(EXP) ARGS="$(ARGS)"
	$(PY) pipelines/report.py data=$(DATA) print_report=true

# Inference cost of User-LLM against the text prompt at history 50/100/200 (FLOPs, tokens, latency).
benchmark: $(STAMP)
	$(PY) pipelines/benchmark.py $(OVERRIDES)

# The latest result of every stage for DATA as outputs/report.md, plots in outputs/report/
# (ARGS="report_file=<path>.md" puts it elsewhere). Stages not run yet are listed with their command.
report: $(STAMP)
	$(PY) pipelines/report.py $(OVERRIDES)

# Prepare-stage benchmark: the project against pandas on ML-20M-shaped synthetic data, generated
# once into benchmarks/results/ml20m_synth/. BENCH_ARGS="--rows 2000000" for a quick run.
BENCH_ARGS ?=
benchmark-data: $(STAMP)
	$(PY) benchmarks/prepare_bench.py $(BENCH_ARGS)

# The paper's ablations on the finetune stage (conf/hparams_search/paper_ablations.yaml): history
# length 50/100/200 x four arms (conf/ablation/: cross-attention/soft prompt x Perceiver on/off),
# 12 jobs of 300 steps each (73 minutes measured on 2 cores); the TP arm is a GPU job (see the config).
# One encoder pretrained on 200-event windows serves every history length. The table of all jobs:
# outputs/<dataset>/multirun/finetune/<time>/summary.md (and .csv).
SWEEP_ENCODER := outputs/$(DATA)/pretrain_history200

sweep: $(STAMP)
	test -f $(SWEEP_ENCODER)/encoder.safetensors || $(PY) pipelines/pretrain.py data=$(DATA) \
		$(if $(EXP),experiment=$(EXP)) data.history_len=200 result_dir=$(SWEEP_ENCODER)
	$(PY) pipelines/finetune.py hparams_search=paper_ablations $(OVERRIDES)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
