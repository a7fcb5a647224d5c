# Two commands on a fresh machine: `make run` (install, migrate, serve on :8000) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export FLASK_APP := voiceforge

.PHONY: run test install install-dev migrate lint bench clean

run: install migrate
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# scripts/install.sh is the one install: CI (.ci/run -> make test) and the Dockerfile run it too.
$(VENV)/.installed: requirements.txt setup.cfg scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh --dev
	touch $@

migrate: install
	$(BIN)/flask db upgrade

lint: install-dev
	$(BIN)/ruff check .

bench: install-dev
	$(BIN)/python bench/bench_tts.py

clean:
	rm -rf $(VENV) build *.egg-info
