"""The bench's kernel ruler: trace lines (as tracefs prints them) to FIFREEZE/FITHAW calls."""
from bench.ktrace import parse, summary

TRACE = """\
# tracer: nop
         python3-100     [000] .....   10.000050: sys_ioctl -> 0xffffffffffffffe7
         python3-100     [001] .....   10.000100: sys_ioctl(fd: 0x1c, cmd: 0xc0045877, arg: 0)
         python3-101     [000] .....   10.000200: sys_ioctl(fd: 0x1d, cmd: 0xc0045877, arg: 0)
         python3-101     [000] .....   10.020200: sys_ioctl -> 0x0
         python3-100     [001] .....   10.030100: sys_ioctl -> 0x0
 xe-quiesce-guar-102     [001] .....   10.040000: sys_ioctl(fd: 3, cmd: 0xc0045878, arg: 0)
 xe-quiesce-guar-102     [001] .....   10.041000: sys_ioctl -> 0x0
         python3-100     [001] .....   10.042000: sys_ioctl(fd: 0x1c, cmd: 0xc0045878, arg: 0)
         python3-100     [001] .....   10.042010: sys_ioctl -> 0xffffffffffffffea
"""


def test_calls_pair_each_exit_with_its_threads_enter():
    """Exits of other ioctls (a tty check: no enter recorded, filtered) are skipped."""
    calls = parse(TRACE)
    assert [(c["op"], c["tid"], c["ret"]) for c in calls] == [
        ("freeze", 100, 0), ("freeze", 101, 0), ("thaw", 102, 0), ("thaw", 100, -22)]
    assert calls[2]["comm"] == "xe-quiesce-guar"


def test_summary_is_first_freeze_entry_to_last_successful_thaw_return():
    seen = summary(parse(TRACE))
    assert round(seen["window"], 6) == 0.0409
    assert round(seen["freeze"], 6) == 0.03
    assert (seen["freezes"], seen["thaws"], seen["failed"]) == (2, 1, 1)
    assert summary(parse(TRACE.split("xe-quiesce-guar")[0])) is None  # no thaw seen
