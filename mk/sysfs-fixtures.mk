# Block-device discovery fixtures (issue 2).
#   make sysfs-fixtures              rebuild tests/fixtures/sysfs/<scenario>/ from build_sysfs.py
#   make capture-sysfs OUT=DIR       capture this machine's sysfs/mountinfo view into DIR
.PHONY: sysfs-fixtures capture-sysfs

sysfs-fixtures:
	$(PYTHON) tests/fixtures/build_sysfs.py

capture-sysfs:
	tests/fixtures/capture_sysfs.sh $(or $(OUT),$(error set OUT=DIR))
