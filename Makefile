# plugind: `make run` starts the daemon with the example plugins; `make test` runs every check.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup run test test-hosts lint typecheck pytest bench clean

setup:
	@bash scripts/setup.sh

# On a systemd host with cgroup v2 the daemon must be alone in a cgroup delegated to it (its plugin
# groups go beside it; docs/sandbox.md), which a login shell's session is not: there it runs in a
# transient scope of its own. Elsewhere (no systemd as PID 1, cgroup v1 or hybrid) it runs as is.
run: setup
	@$(PY) scripts/dev_prepare.py
	@set -a; . data/dev.env; set +a; \
	if [ -d /run/systemd/system ] && [ -f /sys/fs/cgroup/cgroup.controllers ]; then \
		exec systemd-run $$([ "$$(id -u)" -eq 0 ] || echo --user) --scope --collect -p Delegate=yes \
			--unit=plugind-dev-$$$$ $(VENV)/bin/plugind serve --config config/plugins.toml; \
	fi; \
	exec $(VENV)/bin/plugind serve --config config/plugins.toml

lint: setup
	$(VENV)/bin/ruff check plugind tests bench examples scripts

typecheck: setup
	$(VENV)/bin/mypy

pytest: setup
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

# The host lane: a Debian 12 guest (systemd, cgroup v2) built from Debian packages and booted with
# qemu; runs the systemd, privileged, container and rootless lanes; writes build/hosts/report.json.
# Root; slow under emulation (see docs/operations.md, "Supported hosts"). LANES=systemd,privileged
test-hosts:
	python3 scripts/hosts/lane.py $(if $(LANES),--lanes $(LANES))

# Benchmarks print ratios against floors measured in the same run; the sandboxed ones need root.
bench: setup
	$(PY) bench/digest.py
	$(PY) bench/hooks.py
	$(PY) bench/hooks.py --sandbox
	$(PY) bench/sandbox.py
	$(PY) bench/load.py
	$(PY) bench/monitor.py
	$(PY) bench/metrics_render.py
	$(PY) bench/health.py
	$(PY) bench/liveness.py
	$(PY) bench/limits.py
	$(PY) bench/peers.py

clean:
	rm -rf data build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
