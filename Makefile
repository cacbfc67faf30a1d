# fer-batch developer entry points. `make demo` and `make test` work on a fresh clone:
# both depend on `setup`, which installs the exact versions in uv.lock into .venv.
#
# uv, not pip-tools: one tool resolves (uv.lock, with every file's sha256), installs
# (in parallel, from its cache) and checks that the lock matches pyproject.toml
# (`--locked` fails when it does not). It comes from the package registry as a wheel,
# pinned below, so a fresh machine needs only Python and pip.
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
LATEST ?= /tmp/fer-batch-latest
DEMO := demo
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup lock test-latest demo test test-fast bench lint clean

setup: $(VENV)/.installed

$(UV):
	$(PYTHON) -m pip install -q --target $(TOOLS) uv==$(UV_VERSION)

# Exactly the lock: `--locked` refuses a uv.lock that no longer matches pyproject.toml.
# --compile-bytecode: uv, unlike pip, installs no .pyc files, and where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines) none is ever written, so every
# process, each Ray worker included, compiled Ray, pyarrow and numpy from source at start:
# 3.3 s in the driver alone. A cold `fer-batch annotate` of 380 photos took 71 s without
# them and 44-45 s with them (2026-12-07, this 2-core machine); the compile costs 30 s once.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --compile-bytecode --python "$$(command -v $(PYTHON))"
	touch $@

# Re-resolve uv.lock from pyproject.toml's ranges (newest allowed releases).
lock: | $(UV)
	$(UV) lock --upgrade --python "$$(command -v $(PYTHON))"

# The newest releases the ranges allow, in a throwaway environment, without touching
# uv.lock: the whole test suite, then planning manifests of 10k, 1M and 10M lines. A release that breaks
# fer-batch shows up here before a user installs it.
test-latest: | $(UV)
	rm -rf $(LATEST) && mkdir -p $(LATEST)
	cp pyproject.toml $(LATEST)/
	cd $(LATEST) && $(CURDIR)/$(UV) lock --python "$$(command -v $(PYTHON))" -q
	UV_PROJECT_ENVIRONMENT=$(LATEST)/venv $(UV) sync --frozen --compile-bytecode --python "$$(command -v $(PYTHON))" \
	  --project $(LATEST) --no-install-project
	UV_PROJECT_ENVIRONMENT=$(LATEST)/venv $(UV) pip install -q --python $(LATEST)/venv/bin/python \
	  --no-deps -e .
	$(LATEST)/venv/bin/python -c "import duckdb, keras, ray, tensorflow as tf; \
	  print('latest:', 'tensorflow', tf.__version__, 'keras', keras.__version__, \
	        'duckdb', duckdb.__version__, 'ray', ray.__version__)"
	$(LATEST)/venv/bin/python -m pytest -q
	$(LATEST)/venv/bin/python -m fer_batch.bench.manifest_memory 10000 1000000 10000000

demo: setup
	rm -rf $(DEMO)
	$(BIN)/python -m fer_batch.demo $(DEMO)/archive
	$(BIN)/fer-batch annotate $(DEMO)/archive --output $(DEMO)/out
	$(BIN)/fer-batch query $(DEMO)/out \
	  "SELECT regexp_extract(m.source_uri, '[^/]+$$') AS file, m.status, m.n_faces, \
	          f.emotion, round(f.emotion_score, 3) AS score, e.error_type \
	   FROM media m LEFT JOIN faces f USING (source_uri) LEFT JOIN errors e USING (source_uri) \
	   WHERE m.media_type = 'image' \
	   ORDER BY file"
	$(BIN)/fer-batch query $(DEMO)/out \
	  "SELECT regexp_extract(source_uri, '[^/]+$$') AS video, track_id, round(start_s, 1) AS start_s, round(end_s, 1) AS end_s, n_frames, \
	          emotion FROM tracks"
	$(BIN)/fer-batch report $(DEMO)/out

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/fer-batch bench

lint: setup
	$(BIN)/ruff check fer_batch jobs tests

clean:
	rm -rf $(VENV) $(TOOLS) $(DEMO) .pytest_cache
