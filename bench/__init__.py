"""`make bench`: the frozen window and the idle cost, measured beside qemu-ga and the raw floor.

Every comparison in docs/benchmarks.md comes from one run of `python -m bench.run`, on
loop filesystems the run creates on its own tmpfs; nothing else on the machine is ever
frozen (see filesystems.assert_ours).
"""
