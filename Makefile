# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.auralens-installed

.PHONY: demo test venv bench clean

# torch is pinned by a constraint so no extra ever swaps the local CPU build for a CUDA one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	printf 'torch==2.13.0\ntorchvision==0.0.0\ntorchaudio==0.0.0\n' > $(VENV)/constraints.txt
	printf '[install]\nconstraint = %s\n' "$(abspath $(VENV))/constraints.txt" > $(VENV)/pip.conf
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,train]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/auralens demo --out runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/auralens bench yield --json

clean:
	rm -rf runs .pytest_cache
