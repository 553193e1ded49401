# `make run` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS ?= 0
export RAY_DATA_PARQUET_FOOTER_NUM_ACTORS ?= 1

.PHONY: run test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/autoal run jobs/main.yaml --out runs/main

test: $(STAMP)
	$(PY) -m pytest tests

clean:
	rm -rf runs
