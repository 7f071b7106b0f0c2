# The README's two commands: `make run` starts the whole system, `make test` runs the suite.
# Both install the pinned requirements into .venv first (once, and again when they change).

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin

.PHONY: run test bench

run: $(VENV)/installed
	PATH="$(BIN):$$PATH" $(BIN)/supervisord -c supervisord.conf

test: $(VENV)/installed
	$(BIN)/python -m pytest

bench: $(VENV)/installed
	$(BIN)/python -m bench

$(VENV)/installed: requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@
