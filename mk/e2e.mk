# End to end on real Xen (issue 7): Xen 4.17 + a Debian dom0 + domUs under QEMU (TCG).
#   make e2e                 build or reuse the cached images, boot, run every scenario
#   make e2e E2E_ARGS='--boot oxenstored --plan pv:smoke+success'
# Images: /var/cache/xe-quiesce/e2e/ (rebuilt when a package version or the recipe changes).
# The domU gets the .deb that `make deb` builds; a failed boot keeps its serial log in
# artifacts/e2e/. One line per scenario: PASS, FAIL or SKIP; exit 1 on any FAIL.
# make test runs test-e2e: every scenario, and a SKIP fails it too (--strict).
E2E_ARGS ?=

.PHONY: e2e test-e2e
e2e: apt $(VENV)/stamp deb
	$(PYTHON) tests/e2e/bed.py $(E2E_ARGS)
test-e2e: apt $(VENV)/stamp deb
	$(PYTHON) tests/e2e/bed.py --strict
