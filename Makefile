# The two commands of the README. Both create the virtual environment on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: demo models lint test test-all clean

# torch is pinned in the same pip command as the package: a separate, unpinned resolution
# would let pip fetch the newest torch with gigabytes of CUDA libraries.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[test,pretrained,serve]"
	touch $@

# The main job: train a small U-Net on built-in synthetic data, evaluate, predict (about 2 minutes on 2 cores).
demo: $(BIN)/.installed
	$(BIN)/segforge demo

models: $(BIN)/.installed
	$(BIN)/segforge models --size 512

# ruff's checks (pyproject.toml [tool.ruff]) and its formatting, changed nowhere.
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# CI (CI=true) also runs the @pytest.mark.slow checks; locally `make test-all` does.
test: lint
	$(BIN)/python -m pytest -q $(if $(CI),-m "slow or not slow",)

# Including the @pytest.mark.slow checks.
test-all: lint
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
