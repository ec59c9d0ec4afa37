# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# Both create the virtual environment first if it is missing: CPU torch 2.13.0, then autoprune
# with the versions it is tested with (constraints.txt, so pip need not search for a resolution).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test env

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0 -e '.[all]'
	touch $@

demo: env
	$(BIN)/autoprune search examples/digits_demo.yaml
	$(BIN)/autoprune front runs/digits-demo --measure

test: env
	$(BIN)/python -m pytest -q --durations=20
