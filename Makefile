# `make demo` and `make test` both start from `make install`, which creates .venv once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	# seqeval, the tests' reference for entity-level F1, exists only as a source package whose setup
	# fetches setuptools_scm at build time, which no longer builds in pip's isolated build: built
	# here without isolation, with a setuptools_scm it accepts already installed.
	$(BIN)/pip install --quiet setuptools wheel "setuptools_scm<9"
	$(BIN)/pip install --quiet --no-build-isolation "seqeval==1.2.2"
	touch $(STAMP)

# Trains the nano GPT on the shipped Shakespeare corpus, exports it and samples from the bundle.
demo: install
	rm -rf demo
	$(BIN)/zoo train gpt --preset nano --max-steps 500 --eval-every 100 --out demo/run
	$(BIN)/zoo export demo/run --out demo/bundle
	@for prompt in "ROMEO." "KING HENRY." "To be, or not to be"; do \
	  echo; echo "=== $$prompt"; \
	  $(BIN)/zoo generate demo/bundle --prompt "$$prompt" --max-new-tokens 80 --temperature 0.8 --top-k 40 --seed 1 || exit 1; \
	done

# The suite once per backend (the backend-independent tests only with the first), then the tests
# that compare backends (each in its own processes). Every part runs two test files at a time with
# pytest-xdist (`--dist loadfile`: a file's tests, and its module fixtures, stay in one worker):
# much of a test is subprocess start-up, server start-up and waiting, and one worker left the
# second core idle (the jax part's load average was 1.2 on 2 cores).
XDIST := -n 2 --dist loadfile
test: install
	@echo "=== tests on jax (and the backend-independent tests)"
	KERAS_BACKEND=jax $(BIN)/pytest -q --durations=10 $(XDIST) -m "not cross_backend"
	@for backend in tensorflow torch; do \
	  echo "=== tests on $$backend"; \
	  KERAS_BACKEND=$$backend $(BIN)/pytest -q --durations=10 $(XDIST) -m "not cross_backend and not backend_independent" || exit 1; \
	done
	@echo "=== cross-backend tests"
	$(BIN)/pytest -q --durations=10 $(XDIST) -m cross_backend

bench: install
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) demo runs
