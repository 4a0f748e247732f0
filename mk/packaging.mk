# Distro packages and service integration (issue 6).
#   make deb               .deb (and .dsc) via dpkg-buildpackage in build/packaging/deb,
#                          copied to build/packages/ (never into the repo's parent)
#   make rpm               .rpm (systemd, and the sysvinit/chkconfig variant) -> build/packages/
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

# Two builds: the systemd package, and (dist tag .sysv) the chkconfig variant that
# EL6-style systems get, so its scriptlets are built and checked here too.
# --nodeps: Debian's rpm database is empty, so no BuildRequires can be met here.
# Debian's rpm runs brp-compress, a bash script, with sh: run it with bash.
RPMBUILD = env PATH=$(SYS_PATH) rpmbuild -bb --nodeps --quiet --define "_topdir $(PKG_BUILD)/rpm" \
	--define "upstream_version $(PKG_VERSION)" --define "__brp_compress bash /usr/lib/rpm/brp-compress"
rpm: apt $(PYXS_SDIST)
	rm -rf $(PKG_BUILD)/rpm && mkdir -p $(PKG_BUILD)/rpm/SOURCES $(PKG_OUT)
	cp $(PYXS_SDIST) $(PKG_BUILD)/rpm/SOURCES/
	tar -czf $(PKG_BUILD)/rpm/SOURCES/$(PKG_NAME)-$(PKG_VERSION).tar.gz $(TREE_EXCLUDES) \
		--transform 's,^\.,$(PKG_NAME)-$(PKG_VERSION),' .
	$(RPMBUILD) rpm/$(PKG_NAME).spec
	$(RPMBUILD) --without systemd --define "dist .sysv" rpm/$(PKG_NAME).spec
	rm -f $(PKG_OUT)/$(PKG_NAME)-*.rpm
	cp $(PKG_BUILD)/rpm/RPMS/noarch/*.rpm $(PKG_OUT)/

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
