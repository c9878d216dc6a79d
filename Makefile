# Set-up and checks.  `make demo` and `make test` are the README's two commands: each creates or
# updates .venv in the repository root, so both work on a fresh machine and are idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The package asks for a torch range; this pin takes the CPU wheel (a GPU user: make TORCH=torch).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.xas-bluesky-installed
# the package's extras installed into .venv; CI adds larch (xraylarch, ~1.5 GB): make EXTRAS=...
EXTRAS ?= simulate,test,docs,kafka,adaptive,queueserver
DEMO_ARGS ?=

.PHONY: demo test lint docs venv clean redis postgres

venv: $(STAMP)

$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip show torch >/dev/null 2>&1 || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xas-bluesky demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint redis postgres
	$(PY) -m pytest

# the queue-server tests start a real redis server: Debian's package where it is missing (root)
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	      || echo "make: apt-get could not install redis-server; the queue-server tests will skip"; \
	  else \
	    echo "make: redis-server not found (as root: apt-get install redis-server); the queue-server tests will skip"; \
	  fi; }

# the catalog tests also run tiled on a PostgreSQL cluster of their own: Debian's server where it
# is missing (root); its binaries live off PATH, in /usr/lib/postgresql/<version>/bin
postgres:
	@{ command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	      || echo "make: apt-get could not install postgresql; the PostgreSQL catalog tests will skip"; \
	  else \
	    echo "make: PostgreSQL not found (as root: apt-get install postgresql); the PostgreSQL catalog tests will skip"; \
	  fi; }

docs: $(STAMP)
	$(VENV)/bin/sphinx-build -q -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .ruff_cache
