# The two commands of the README: `make run` (whole service, embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEV_STAMP := $(VENV)/.installed-dev
RUN_STAMP := $(VENV)/.installed-run
# Tests run Django on the machine's PostgreSQL, the production engine (override to taste).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/analytics

.PHONY: run test lint typecheck pytest bench clean chromium zookeeper deploy-tools

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(PY) manage.py devstack

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy .

# Browser tests drive Debian's Chromium through Playwright (never `playwright install`: no
# browser downloads here). Installed from Debian's packages when missing and we are root.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "browser tests need Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1; fi; }

# The cluster DDL test (tests/clickhouse_cluster) runs Debian's ZooKeeper (Java 17 is on the
# machines); installed from Debian's packages when missing and we are root, like chromium.
zookeeper:
	@test -x /usr/share/zookeeper/bin/zkServer.sh || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	  else echo "cluster DDL tests need Debian's zookeeper: sudo apt-get install -y zookeeper" >&2; exit 1; fi; }

# Deployment checks (tests/deploy): kubectl (kustomize) and promtool from Debian; checkov in a
# virtualenv of its own (its pins would downgrade packaging and cachetools in the project's).
CHECKOV_VENV ?= .venv-tools
CHECKOV_VERSION := 3.3.30
$(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q 'checkov==$(CHECKOV_VERSION)'
	touch $@

deploy-tools: $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)
	@for tool in kubectl:kubectl promtool:prometheus; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $${tool##*:} >/dev/null; \
	  else echo "deployment tests need Debian's $${tool##*:}: sudo apt-get install -y $${tool##*:}" >&2; exit 1; fi; done

pytest: $(DEV_STAMP) chromium zookeeper deploy-tools
	DATABASE_URL=$(TEST_DATABASE_URL) $(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) var artifacts
