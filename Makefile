# bertrep: `make install demo` on a fresh machine (the whole quick study), `make test` for the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= $(or $(BERTREP_DATA_DIR),../shared/data)
export BERTREP_DATA_DIR := $(abspath $(DATA))
export HF_HUB_OFFLINE ?= 1
# `mlflow run --env-manager local` runs `python` from PATH: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: data install demo train-one test test-quick test-slow lint format ui bench clean analyze figures

install: $(BIN)/.installed
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

# The whole quick study (src/bertrep/study.py): the three quick sweeps, the analysis and
# the figures, then the headline numbers; a second call reuses every finished run.
# SETTING=smoke runs the same pipeline in minutes (OVERRIDES as for the sweeps).
SETTING ?= quick
demo: install
	$(BIN)/python -m bertrep.study --setting $(SETTING) --overrides "$(OVERRIDES)"

# One real training run on the CPU: MiniLM fine-tuned on SST-2, logged to ./mlflow.db.
train-one: install
	$(BIN)/mlflow run . -e train --env-manager local \
		-P task=sst2 -P base_model=minilm -P max_steps=60 -P lr=1e-4

# The built-in tasks' data from the hub into DATA (resumable): then `make demo DATA=...`.
data: install
	HF_HUB_OFFLINE=0 $(BIN)/python -m bertrep.data $(DATA)

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q --durations=25 -n 2 --dist loadgroup -m ""  # every test, slow ones too

test-quick: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ui:
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}

bench: install
	$(BIN)/python bench/cka.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Sweeps (src/bertrep/sweep.py): SPEC (default: sweeps/quick/<kind>.yaml) and OVERRIDES
# as in docs/sweeps.md; RESUME=true
# continues a killed sweep. `make sweep-smoke` checks the whole pipeline in a few minutes.
SPEC ?=
OVERRIDES ?=
RESUME ?= false
.PHONY: sweep-single sweep-aufc sweep-forgetting sweep-smoke
sweep-single sweep-aufc sweep-forgetting: install
	$(BIN)/mlflow run . -e $(subst -,_,$@) --env-manager local $(if $(SPEC),-P spec=$(SPEC)) \
		-P overrides="$(OVERRIDES)" -P resume=$(RESUME)

sweep-smoke: install
	$(BIN)/mlflow run . -e sweep_aufc --env-manager local -P spec=sweeps/smoke/aufc.yaml \
		-P overrides="$(OVERRIDES)"

# The analysis stage (src/bertrep/analyze.py): ANALYSIS spec (default analysis/quick.yaml)
# with ANALYSIS_OVERRIDES ("base_model=/path,sweeps.aufc=NAME"); then `make figures`
# redraws every figure of the newest analysis run (RUN_ID= another) into figures/ from
# its logged tables alone.
ANALYSIS ?= analysis/quick.yaml
ANALYSIS_OVERRIDES ?=
RUN_ID ?=
analyze: install
	$(BIN)/mlflow run . -e analyze --env-manager local -P spec=$(ANALYSIS) \
		-P overrides="$(ANALYSIS_OVERRIDES)"

figures: install
	$(BIN)/python -m bertrep.figures --out figures $(if $(RUN_ID),--run_id $(RUN_ID))
