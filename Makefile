# Set-up needs only python3 with pip: uv is installed on first use, then `uv sync --frozen`
# builds .venv exactly from the committed uv.lock (torch, torchvision from PyPI).
UV := python3 -m uv
RUN := $(UV) run --frozen

.PHONY: setup demo test lint

.venv/.synced: uv.lock pyproject.toml
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.5"
	$(UV) sync --frozen
	@touch $@

setup: .venv/.synced

# The main job: the embedded default recipe (bundled model, scikit-image's sample photos).
# --overwrite: a second `make demo` replaces the first demo's run folder (only ever one of ours).
demo: setup
	$(RUN) cli.py run recipes/default.yaml --overwrite

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

# The whole test suite: lint, types, then pytest (slow and gpu tests excluded; see pyproject).
test: lint
	$(RUN) pytest
