# Main use: make sweep STRATEGY=ewc  ->  results/<study>/{trials,accuracy}.parquet + report.html
PYTHON ?= python3
STRATEGY ?= ewc
BENCHMARK ?= split-digits
SCENARIO ?= task
TRIALS ?= 16
SEEDS ?= 3
EPOCHS ?=
STUDY ?= $(STRATEGY)-$(BENCHMARK)-$(SCENARIO)
RESULTS ?= results
GPUS_PER_TRIAL ?= 0
CPUS_PER_TRIAL ?= 1
MAX_CONCURRENT ?=
ADDRESS ?=
SAMPLER ?= tpe
RESUME ?=
# any other `sweep run` flag, e.g. every trial's TrainConfig values: SWEEP_ARGS="--hidden 400,400 --lr 3e-4"
SWEEP_ARGS ?=
# `make test` runs the suite in this many processes (pytest-xdist): most tests wait on subprocesses and Ray
TEST_WORKERS ?= 2

SWEEP_FLAGS = --strategy $(STRATEGY) --benchmark $(BENCHMARK) --scenario $(SCENARIO) --trials $(TRIALS) \
	--seeds $(SEEDS) --study $(STUDY) --results $(RESULTS) --gpus-per-trial $(GPUS_PER_TRIAL) \
	--cpus-per-trial $(CPUS_PER_TRIAL) --sampler $(SAMPLER) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(MAX_CONCURRENT),--max-concurrent $(MAX_CONCURRENT)) \
	$(if $(ADDRESS),--address $(ADDRESS)) $(if $(RESUME),--resume) $(SWEEP_ARGS)

export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install quickstart sweep report test lint bench clean-study

install:  ## torch first, from the pinned files pip resolves here, then the package, its dev tools and the trackers
	$(PYTHON) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PYTHON) -m pip install --quiet -e ".[dev,mlflow,wandb,tensorboard]"  # the trackers of --log: 29 MB, their tests

# the quick start is a study of its own (results/quickstart, search_spaces/quickstart.yaml): `make sweep
# STRATEGY=ewc` after it starts its own study, and widening ewc.yaml never changes what the quick start shows
QUICKSTART_TRIALS ?= 12
QUICKSTART_SEEDS ?= 3

quickstart: install  ## the README's first command: install, then EWC on offline split-digits (domain-incremental)
	$(MAKE) sweep STRATEGY=ewc SCENARIO=domain STUDY=quickstart TRIALS=$(QUICKSTART_TRIALS) \
		SEEDS=$(QUICKSTART_SEEDS) EPOCHS= SWEEP_ARGS="--space $(CURDIR)/search_spaces/quickstart.yaml"

sweep:  ## search STRATEGY's space, then write the study's report with its Pareto front
	$(PYTHON) -m sweep.cli run $(SWEEP_FLAGS)
	$(PYTHON) -m sweep.cli report $(RESULTS)/$(STUDY)

report:
	$(PYTHON) -m sweep.cli report $(RESULTS)/$(STUDY)

test:  ## the README's test command: lint, type-check sweep/ ([tool.mypy] in pyproject.toml), then the whole suite
	$(PYTHON) -m ruff check sweep tests bench examples
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint:
	$(PYTHON) -m ruff check sweep tests bench examples
	$(PYTHON) -m mypy

bench:  ## speed and memory as ratios measured in one run; writes bench/out/results.json
	$(PYTHON) -m bench $(BENCH_FLAGS)

clean-study:
	$(PYTHON) -m sweep.cli clean $(RESULTS)/$(STUDY)
