# `make run` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Label Studio for the integration test (tests/test_label_studio.py), in its own virtual environment:
# its pinned Django stack clashes with Ray's dependencies. `template` is its SQLite database, migrated
# once here (minutes), which each test run copies (seconds).
LS_VENV ?= .venv-ls
LS_STAMP := $(LS_VENV)/.installed
LABEL_STUDIO ?= label-studio==1.23.2
CHROMIUM ?= /usr/bin/chromium
# pytest workers, each a test session with its own local Ray (tests/conftest.py); a file stays on one
# worker, so its module fixtures are made once. One worker leaves a core idle while tests wait on
# subprocesses, Ray start-ups and Label Studio.
TEST_WORKERS ?= 2

# the set-ups (autoal's venv, Label Studio's, Chromium) download and install side by side
MAKEFLAGS += --jobs=3

export RAY_USAGE_STATS_ENABLED ?= 0
export RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS ?= 0
export RAY_DATA_PARQUET_FOOTER_NUM_ACTORS ?= 1

.PHONY: run test clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet '$(LABEL_STUDIO)'
	rm -rf $(LS_VENV)/template
	LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN= \
		$(LS_VENV)/bin/label-studio version --data-dir $(LS_VENV)/template > /dev/null
	touch $@

# the screenshot of Label Studio's Data Manager: Debian's Chromium, run headless by the test
$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

run: $(STAMP)
	$(VENV)/bin/autoal run jobs/main.yaml --out runs/main

test: $(STAMP) $(LS_STAMP) $(CHROMIUM)
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

clean:
	rm -rf runs
