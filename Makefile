# make demo : set up .venv (first run only), run the node on the built-in simulated phantom session -> demo_out/
# make test : same set-up, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Debian packages: libusb for open3d's import, the reference OpenIGTLink C++ library for interop tests.
APT_PACKAGES := libusb-1.0-0 libopenigtlink-dev g++

.PHONY: demo test install system-deps clean

demo: $(STAMP)
	$(VENV)/bin/usx-stream demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# Re-install only when the dependency declarations change: a second `make test` starts at once.
$(STAMP): setup.cfg constraints.txt pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# Root: install the Debian packages that are missing. Not root: skip; open3d then loads libusb from the
# pip package libusb-package (see usx_stream/_deps.py) and the interop tests skip (or fail in CI).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing"; fi; \
	else echo "not root: skipping Debian packages ($(APT_PACKAGES))"; fi

clean:
	rm -rf $(VENV) demo_out .pytest_cache *.egg-info
