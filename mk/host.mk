# The dom0 companion's package (issue 8): xe-quiesce-host, noarch, for the dom0 Python
# of XCP-ng 8.2 (3.6) and 8.3, with pyxs, click and XenAPI bundled (see the spec).
#   make rpm-host   build/packages/xe-quiesce-host-<version>-1.xcpng8.{2,3}.noarch.rpm
#                   (the same payload for both: their dom0 python3 is 3.6)
# `make rpm` builds it too once it depends on rpm-host. The sdists are cached in
# /var/cache/xe-quiesce/host/. Uses packaging.mk's RPMBUILD, PYXS_SDIST and tarball
# conventions (read when the recipe runs: that file is included after this one).
HOST_PKG := xe-quiesce-host
HOST_CACHE := /var/cache/xe-quiesce/host
HOST_CLICK_VERSION := 7.1.2
HOST_XENAPI_VERSION := 26.21.1
HOST_SDISTS := $(HOST_CACHE)/click-$(HOST_CLICK_VERSION).tar.gz \
	$(HOST_CACHE)/xenapi-$(HOST_XENAPI_VERSION).tar.gz

# XCP-ng's own dist tags (its dom0 packages are named so).
HOST_DISTS := xcpng8.2 xcpng8.3

.PHONY: rpm-host

$(HOST_CACHE)/click-$(HOST_CLICK_VERSION).tar.gz:
	mkdir -p $(HOST_CACHE)
	env PATH=$(SYS_PATH) python3 -m pip download -q --no-deps --no-binary :all: \
		-d $(HOST_CACHE) click==$(HOST_CLICK_VERSION)

$(HOST_CACHE)/xenapi-$(HOST_XENAPI_VERSION).tar.gz:
	mkdir -p $(HOST_CACHE)
	env PATH=$(SYS_PATH) python3 -m pip download -q --no-deps --no-binary :all: \
		-d $(HOST_CACHE) XenAPI==$(HOST_XENAPI_VERSION)

# PYXS_SDIST comes from packaging.mk, parsed after this file: expanded a second time.
.SECONDEXPANSION:
rpm-host: apt $$(PYXS_SDIST) $(HOST_SDISTS)
	rm -rf $(PKG_BUILD)/rpm-host && mkdir -p $(PKG_BUILD)/rpm-host/SOURCES $(PKG_OUT)
	cp $(PYXS_SDIST) $(HOST_SDISTS) $(PKG_BUILD)/rpm-host/SOURCES/
	tar -czf $(PKG_BUILD)/rpm-host/SOURCES/$(PKG_NAME)-$(PKG_VERSION).tar.gz $(TREE_EXCLUDES) \
		--transform 's,^\.,$(PKG_NAME)-$(PKG_VERSION),' .
	set -e; for dist in $(HOST_DISTS); do \
		$(RPMBUILD) --define "_topdir $(PKG_BUILD)/rpm-host" --define "dist .$$dist" \
			rpm/$(HOST_PKG).spec; \
	done
	rm -f $(PKG_OUT)/$(HOST_PKG)-*.rpm
	cp $(PKG_BUILD)/rpm-host/RPMS/noarch/$(HOST_PKG)-*.rpm $(PKG_OUT)/

# The dom0 package is built with the guest packages.
rpm: rpm-host
