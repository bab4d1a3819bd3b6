# Two commands (see README):  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

# Offline-safe defaults: no Hugging Face Hub, no Prefect telemetry.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export HF_UPDATE_DOWNLOAD_COUNTS ?= 0
export HF_HUB_DISABLE_TELEMETRY ?= 1
export DO_NOT_TRACK ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_LOGGING_LEVEL ?= WARNING

.PHONY: setup demo test bench clean

# The compiled parts (setup.py) are rebuilt when its sources change.
$(BIN)/diffmix: pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h vendor/xdiff/*.c vendor/xdiff/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	@$(BIN)/python -c "import diffmix, torch, prefect; print('diffmix installed: torch', torch.__version__, 'prefect', prefect.__version__)"
	@touch $@

setup: $(BIN)/diffmix

demo: setup
	$(BIN)/diffmix demo --out demo-out

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/build.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
