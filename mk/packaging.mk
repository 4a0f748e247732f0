# Distro packages and service integration (issue 6).
#   make deb               .deb (and .dsc) via dpkg-buildpackage in build/packaging/deb,
#                          copied to build/packages/ (never into the repo's parent)
#   make rpm               one .rpm per target in RPM_TARGETS (el8 el9 el10 fc42 fc43: each for
#                          that target's Python), the sysvinit/chkconfig variant, and the
#                          .src.rpm that `rpmbuild --rebuild` turns into the target's own
#                          package -> build/packages/
#   make install DESTDIR=  for distros without our packages (Alpine, Arch, Gentoo)
#   make lint-packaging    lintian, rpmlint, shellcheck, sh -n, systemd-analyze verify
#   make test-packaging    the packaging tests (Debian chroots, rpm metadata); builds first

PKG_NAME := xe-guest-utilities-quiesce
PKG_VERSION = $(shell $(PYTHON) setup.py --version 2>/dev/null)
PKG_BUILD := $(CURDIR)/build/packaging
PKG_OUT := $(CURDIR)/build/packages
PYXS_VERSION := 0.4.1
PYXS_CACHE := /var/cache/xe-quiesce/packaging
PYXS_SDIST := $(PYXS_CACHE)/pyxs-$(PYXS_VERSION).tar.gz
# Debian's own interpreter and tools first, whatever venv is on PATH (pybuild, rpm).
SYS_PATH := /usr/sbin:/usr/bin:/sbin:/bin
# The source tree as it is (uncommitted files included), without build output.
TREE_EXCLUDES := --exclude-vcs --exclude=./build --exclude='./.venv*' --exclude=./artifacts \
	--exclude=__pycache__ --exclude='*.egg-info' --exclude='./.*_cache'

PREFIX ?= /usr
# Where pip puts the console script for PREFIX (Debian's python maps /usr to /usr/local);
# the unit and the init script are pointed there.
BINDIR = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts", vars={"base": "$(PREFIX)"}))')
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
INITDIR ?= $(SYSCONFDIR)/init.d
# sysvinit or openrc: which init script `make install` puts in INITDIR.
INIT_SCRIPT ?= sysvinit

.PHONY: deb rpm install lint-packaging test-packaging

deb: apt
	rm -rf $(PKG_BUILD)/deb && mkdir -p $(PKG_BUILD)/deb/src $(PKG_OUT)
	tar -cf - $(TREE_EXCLUDES) . | tar -xf - -C $(PKG_BUILD)/deb/src
	# The source package too (from the clean copy), so lintian checks debian/ as well.
	cd $(PKG_BUILD)/deb && dpkg-source -b src >/dev/null
	cd $(PKG_BUILD)/deb/src && env PATH=$(SYS_PATH) dpkg-buildpackage -us -uc -b
	rm -f $(PKG_OUT)/$(PKG_NAME)_*
	cp $(PKG_BUILD)/deb/$(PKG_NAME)_* $(PKG_OUT)/

$(PYXS_SDIST):
	mkdir -p $(PYXS_CACHE)
	env PATH=$(SYS_PATH) python3 -m pip download -q --no-deps --no-binary :all: \
		-d $(PYXS_CACHE) pyxs==$(PYXS_VERSION)

# What each target's python3 is, and its dist tag and distro macro: the spec picks
# the dependencies (required or bundled) from rhel/fedora. EL 8 runs our command
# with platform-python (the spec sets that). Fedora 42 has Python 3.13 (Debian
# trixie's, so its install test runs), Fedora 43 has 3.14.
RPM_TARGETS := el8 el9 el10 fc42 fc43
RPM_DEFINES_el8 := --define "dist .el8" --define "rhel 8" --define "python3_version 3.6"
RPM_DEFINES_el9 := --define "dist .el9" --define "rhel 9" --define "python3_version 3.9"
RPM_DEFINES_el10 := --define "dist .el10" --define "rhel 10" --define "python3_version 3.12"
RPM_DEFINES_fc42 := --define "dist .fc42" --define "fedora 42" --define "python3_version 3.13"
RPM_DEFINES_fc43 := --define "dist .fc43" --define "fedora 43" --define "python3_version 3.14"
# --nodeps: Debian's rpm database is empty, so no BuildRequires can be met here.
# Debian's rpm runs brp-compress, a bash script, with sh: run it with bash.
# setup.py runs with Debian's python3 (build_python3), installing into the target's
# site-packages.
RPM_COMMON = --nodeps --quiet --define "_topdir $(PKG_BUILD)/rpm" \
	--define "upstream_version $(PKG_VERSION)" --define "__brp_compress bash /usr/lib/rpm/brp-compress"
RPMBUILD = env PATH=$(SYS_PATH) rpmbuild -bb $(RPM_COMMON)
RPM_CROSS = --define "build_python3 /usr/bin/python3"
# The click that EL 9/10 get bundled: the dom0 package's (host.mk, parsed first).
CLICK_SDIST = $(HOST_CACHE)/click-$(HOST_CLICK_VERSION).tar.gz
rpm: apt $(PYXS_SDIST) $(CLICK_SDIST)
	rm -rf $(PKG_BUILD)/rpm && mkdir -p $(PKG_BUILD)/rpm/SOURCES $(PKG_OUT)
	cp $(PYXS_SDIST) $(CLICK_SDIST) $(PKG_BUILD)/rpm/SOURCES/
	tar -czf $(PKG_BUILD)/rpm/SOURCES/$(PKG_NAME)-$(PKG_VERSION).tar.gz $(TREE_EXCLUDES) \
		--transform 's,^\.,$(PKG_NAME)-$(PKG_VERSION),' .
	env PATH=$(SYS_PATH) rpmbuild -bs $(RPM_COMMON) --define "dist %{nil}" rpm/$(PKG_NAME).spec
	set -e; $(foreach t,$(RPM_TARGETS),$(RPMBUILD) $(RPM_CROSS) $(RPM_DEFINES_$(t)) rpm/$(PKG_NAME).spec;)
	# The chkconfig variant (EL6-style systems), so its scriptlets are built and checked.
	$(RPMBUILD) $(RPM_CROSS) $(RPM_DEFINES_el9) --without systemd --define "dist .sysv" \
		rpm/$(PKG_NAME).spec
	rm -f $(PKG_OUT)/$(PKG_NAME)-*.rpm
	cp $(PKG_BUILD)/rpm/RPMS/noarch/*.rpm $(PKG_BUILD)/rpm/SRPMS/*.src.rpm $(PKG_OUT)/

install:
	$(PYTHON) -m pip install --no-deps --no-build-isolation --no-warn-script-location \
		--root "$(or $(DESTDIR),/)" --prefix $(PREFIX) .
	install -d -m 0755 "$(DESTDIR)$(SYSCONFDIR)/xe-quiesce/hooks.d"
	test -e "$(DESTDIR)$(SYSCONFDIR)/xe-quiesce/xe-quiesce.conf" || \
		install -m 0644 data/xe-quiesce.conf "$(DESTDIR)$(SYSCONFDIR)/xe-quiesce/xe-quiesce.conf"
	for hook in samples/hooks/*; do \
		[ -f "$$hook" ] || continue; \
		install -m 0755 "$$hook" "$(DESTDIR)$(SYSCONFDIR)/xe-quiesce/hooks.d/$${hook##*/}.sample"; \
	done
	install -d -m 0755 "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(INITDIR)"
	sed 's,/usr/bin/xe-quiesce,$(BINDIR)/xe-quiesce,' init/systemd/xe-quiesce.service \
		>"$(DESTDIR)$(UNITDIR)/xe-quiesce.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/xe-quiesce.service"
	for unit in xe-linux-distribution.service xe-daemon.service xen-guest-agent.service; do \
		install -D -m 0644 init/systemd/guest-tools-dropin.conf \
			"$(DESTDIR)$(UNITDIR)/$$unit.d/xe-quiesce.conf"; \
	done
	sed 's,/usr/bin/xe-quiesce,$(BINDIR)/xe-quiesce,' init/$(INIT_SCRIPT)/xe-quiesce \
		>"$(DESTDIR)$(INITDIR)/xe-quiesce"
	chmod 0755 "$(DESTDIR)$(INITDIR)/xe-quiesce"
	install -D -m 0644 man/xe-quiesce.8 "$(DESTDIR)$(PREFIX)/share/man/man8/xe-quiesce.8"
	install -D -m 0644 completion/bash/xe-quiesce \
		"$(DESTDIR)$(PREFIX)/share/bash-completion/completions/xe-quiesce"

# Each check is a pytest test (tests/packaging/test_lint.py), so `make test` counts them.
PACKAGING_PYTEST = XEQ_PACKAGING_TESTS=1 XEQ_PACKAGES=$(PKG_OUT) $(VENV)/bin/python -m pytest \
	-p no:cacheprovider -rs $(PYTEST_ARGS)

lint-packaging: deb rpm $(VENV)/stamp
	$(PACKAGING_PYTEST) tests/packaging/test_lint.py

test-packaging: deb rpm $(VENV)/stamp
	$(PACKAGING_PYTEST) tests/packaging
