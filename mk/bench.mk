# Benchmarks (issue 9): the frozen window and the idle cost, beside qemu-ga, util-linux
# fsfreeze and the raw-ioctl floor, all measured in one run on the bench's own loop
# filesystems (never anything else on the machine). Run as root. Every run is also timed
# by the kernel's syscall tracepoints for FIFREEZE/FITHAW (bench/ktrace.py: a private
# tracefs instance; tracefs is mounted on /sys/kernel/tracing first if it is not).
#   make bench         full run (~20 min on 2 cores): docs/benchmarks.md and
#                      docs/benchmarks-{window-nN,dirty-nN,scale}.png; raw data in
#                      artifacts/bench/results.json
#   make bench-quick   3 repetitions, 10 s idle, 20 agents, into artifacts/bench-quick/
# qemu-guest-agent and python3-matplotlib (Debian's, used by /usr/bin/python3 for the
# plots only) are installed here, for the bench alone. Not part of `make test`;
# tests/bench/test_bench_smoke.py keeps the code paths working there.
BENCH_APT := qemu-guest-agent python3-matplotlib
BENCH_APT_STAMP := /var/cache/xe-quiesce/bench/apt.stamp

.PHONY: bench bench-quick

$(BENCH_APT_STAMP): mk/bench.mk
	apt-get update -qq -o DPkg::Lock::Timeout=900
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=900 --no-install-recommends \
		$(BENCH_APT) >/dev/null
	mkdir -p $(dir $@) && touch $@

# $(1) profile, $(2) output folder for the page and its figures, $(3) results file.
define bench_run
	mkdir -p $(2) $(dir $(3))
	$(VENV)/bin/python -m bench.run --profile $(1) --json $(3)
	rm -f $(2)/benchmarks-*.png
	/usr/bin/python3 -m bench.plot $(3) $(2)
	$(VENV)/bin/python -m bench.report $(3) $(2)/benchmarks.md
endef

bench: apt $(VENV)/stamp $(BENCH_APT_STAMP)
	$(call bench_run,full,docs,$(ARTIFACTS)/bench/results.json)

bench-quick: apt $(VENV)/stamp $(BENCH_APT_STAMP)
	$(call bench_run,quick,$(ARTIFACTS)/bench-quick,$(ARTIFACTS)/bench-quick/results.json)
