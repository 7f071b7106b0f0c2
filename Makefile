# The README's two commands: `make run` starts the whole system, `make test` runs the suite.
# Both install the pinned requirements into .venv first (once, and again when they change).

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
CTL := $(BIN)/supervisorctl -c supervisord.conf

.PHONY: run status test partitions bench cluster cluster-status

# A second `make run` says so plainly instead of supervisord's message about its socket. The
# state folder is the running supervisord's own setting (its environment), not this shell's.
run: $(VENV)/installed
	@if pid=$$($(CTL) pid 2>/dev/null); then \
		state=$$(tr '\0' '\n' </proc/$$pid/environ 2>/dev/null | sed -n 's/^MINI_ANALYTICS_STATE_DIR=//p'); \
		echo "mini-analytics is already running from $(CURDIR) (supervisord pid $$pid," \
		     "state folder $${state:-$(CURDIR)/state}); see: make status" >&2; \
		exit 1; \
	fi
	@rm -f state/bad-setup
	$(BIN)/supervisord -c supervisord.conf
	@$(call fail_on_bad_setup,state/bad-setup)

# A program that exited 2 (a bad setup) ended the run (storage/stop_on_bad_setup.py): its
# reason is the last line printed, and make fails.
fail_on_bad_setup = if [ -f $(1) ]; then echo "mini-analytics stopped: $$(cat $(1))" >&2; exit 1; fi

# supervisorctl's own answer when nothing runs is a socket path and "no such file".
status: $(VENV)/installed
	@if ! $(CTL) pid >/dev/null 2>&1; then \
		echo "mini-analytics is not running (start it with: make run)"; \
	else \
		$(CTL) status; \
	fi; $(BIN)/python -m worker status

# Cluster mode on this machine (docs/cluster.md): 3 NATS nodes, 2 ingest nodes, 2 workers.
CLUSTER_CTL := $(BIN)/supervisorctl -c cluster/supervisord.conf
CLUSTER_BASE := $${MINI_ANALYTICS_CLUSTER_PORT_BASE:-7000}

cluster: $(VENV)/installed
	@if pid=$$($(CLUSTER_CTL) pid 2>/dev/null); then \
		echo "the local cluster is already running (supervisord pid $$pid); see: make cluster-status" >&2; \
		exit 1; \
	fi
	@rm -f state/cluster-bad-setup
	$(BIN)/supervisord -c cluster/supervisord.conf
	@$(call fail_on_bad_setup,state/cluster-bad-setup)

cluster-status: $(VENV)/installed
	@if ! $(CLUSTER_CTL) pid >/dev/null 2>&1; then \
		echo "the local cluster is not running (start it with: make cluster)"; exit 1; \
	fi; \
	$(CLUSTER_CTL) status; base=$(CLUSTER_BASE); \
	MINI_ANALYTICS_CLUSTER=nats://127.0.0.1:$$((base + 1)),nats://127.0.0.1:$$((base + 2)),nats://127.0.0.1:$$((base + 3)) \
		$(BIN)/python -m worker status

test: $(VENV)/installed
	$(BIN)/python -m pytest

# The network-partition schedules (tests/test_partitions.py) at length: 10 rounds each rather
# than the suite's 2, with the checker's line per schedule.
partitions: $(VENV)/installed
	NEMESIS_ROUNDS=$${NEMESIS_ROUNDS:-10} $(BIN)/python -m pytest -s tests/test_partitions.py

bench: $(VENV)/installed
	$(BIN)/python -m bench

$(VENV)/installed: requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@
