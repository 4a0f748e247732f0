# xe-guest-utilities-quiesce: build, lint, test, demo.
# Everything a fresh Debian 12 machine needs is installed by these targets (run as root).

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV := .venv
VENV_OLDEST := .venv-oldest
# Newest dependencies, then the oldest versions that setup.cfg declares.
DEPS_NEWEST := click psutil pyxs
DEPS_OLDEST := click==6.7 psutil==5.4.8 pyxs==0.4.1
TEST_TOOLS := pytest vermin ruff XenAPI
APT_STAMP := /var/cache/xe-quiesce/apt.stamp
ARTIFACTS := artifacts
PYTEST_ARGS ?=

.PHONY: all deps apt venvs lint test unit unit-newest unit-oldest demo clean

all: test

# apt_install LISTS: the packages of those .ci/apt lists (waiting for dpkg's lock).
define apt_install
	apt-get update -qq -o DPkg::Lock::Timeout=900
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends $(shell cat $(1) | sed 's/\#.*//') >/dev/null
	mkdir -p $(dir $@) && touch $@
endef

apt: $(APT_STAMP)
$(APT_STAMP): $(wildcard .ci/apt/*.txt)
	$(call apt_install,$^)

# The demo installs only what it uses: its own list and the xenstore rig's.
APT_DEMO_STAMP := /var/cache/xe-quiesce/apt-demo.stamp
$(APT_DEMO_STAMP): .ci/apt/demo.txt .ci/apt/xenstore.txt
	$(call apt_install,$^)

$(VENV)/stamp: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(DEPS_NEWEST) $(TEST_TOOLS)
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

$(VENV_OLDEST)/stamp: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/pip install -q $(DEPS_OLDEST) pytest XenAPI
	$(VENV_OLDEST)/bin/pip install -q --no-deps -e .
	touch $@

venvs: $(VENV)/stamp $(VENV_OLDEST)/stamp
deps: apt venvs

lint: $(VENV)/stamp
	$(VENV)/bin/vermin --no-tips --violations --target=3.6- --eval-annotations xe_quiesce host-plugin/xe-quiesce
	$(VENV)/bin/ruff check xe_quiesce testbed tests bench host-plugin/xe-quiesce

# pytest exits 5 when it ran no test: that must fail, so only 0 passes.
unit-newest: deps
	$(VENV)/bin/python -m pytest -p no:cacheprovider -rs $(PYTEST_ARGS) tests
unit-oldest: deps
	$(VENV_OLDEST)/bin/python -m pytest -p no:cacheprovider -rs $(PYTEST_ARGS) tests
unit: unit-newest unit-oldest

test: deps lint unit test-packaging test-e2e

demo: $(APT_DEMO_STAMP) $(VENV)/stamp
	$(VENV)/bin/python -m tests.demo

clean:
	rm -rf $(VENV) $(VENV_OLDEST) build dist *.egg-info $(ARTIFACTS)

-include mk/*.mk
