# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make run    the agent on an embedded nats-server, emulated providers, a short demo
#   make test   the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run serve test bench docs clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m router_agent.demo

serve: $(STAMP)
	$(BIN)/router-agent run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(ARGS)

docs: $(STAMP)
	$(BIN)/python -m signals.schema --docs docs/signals.md --schemas docs/schemas

clean:
	rm -rf $(VENV) .router-data .pytest_cache
