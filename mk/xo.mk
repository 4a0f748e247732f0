# Xen Orchestra's own sync-hook client for the tests (issue 13): its published npm package,
# pinned in tests/xo/package.json + package-lock.json, installed with `npm ci` once per lock
# file into /var/cache/xe-quiesce/xo/<hash>/ (see tests/xo/README.md). Needs node + npm.
#   make xo-client   install it (a no-op when the cache has it)
.PHONY: xo-client

xo-client:
	$(PYTHON) tests/xo/client.py install >/dev/null

unit-newest unit-oldest: xo-client
