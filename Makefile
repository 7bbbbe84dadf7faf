VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo serve test test-fast lint bench clean

# System programs: installed by scripts/ensure-system-deps.sh when missing (apt-get as
# root, one sudo otherwise); a quick check of files when everything is there.
DEPS := bash scripts/ensure-system-deps.sh

$(STAMP): pyproject.toml
	$(DEPS) venv
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@$(DEPS) demo
	$(VENV)/bin/rentahal demo

serve: $(STAMP)
	$(VENV)/bin/rentahal serve

test: $(STAMP)
	@PYTHON=$(PY) $(DEPS) test
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy src/rentahal

bench: $(STAMP)
	$(VENV)/bin/rentahal bench overhead

clean:
	rm -rf $(VENV) build *.egg-info
