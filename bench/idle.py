"""What an idle daemon costs: RSS, CPU seconds and context switches, per thread too.

Measured from outside with psutil and /proc (reading them does not wake the daemon),
from READY=1 to `seconds` later. Each thread's blocking system call at the end, with
its timeout, names what wakes it: a thread in poll/select with a timeout wakes itself
periodically, one in accept/read without timeout does not.
"""
import time

import psutil

SYSCALLS = {0: "read", 7: "poll", 23: "select", 43: "accept", 202: "futex", 232: "epoll_wait",
            270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 61: "wait4",
            45: "recvfrom", 47: "recvmsg", 35: "nanosleep", 230: "clock_nanosleep"}


def thread_states(pid):
    """tid -> voluntary, involuntary switches and the blocking syscall (with args)."""
    result = {}
    for thread in psutil.Process(pid).threads():
        tid = thread.id
        try:
            with open("/proc/{}/task/{}/status".format(pid, tid)) as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
            with open("/proc/{}/task/{}/syscall".format(pid, tid)) as handle:
                syscall = handle.read().split()
        except OSError:
            continue
        name = syscall[0]
        if name.isdigit():
            name = SYSCALLS.get(int(name), "syscall " + name)
        result[tid] = {"voluntary": int(fields["voluntary_ctxt_switches"]),
                       "involuntary": int(fields["nonvoluntary_ctxt_switches"]),
                       "cpu": thread.user_time + thread.system_time,
                       "syscall": name, "args": syscall[1:7]}
    return result


def _snapshot(pid):
    process = psutil.Process(pid)
    with process.oneshot():
        cpu = process.cpu_times()
        memory = process.memory_full_info()
        return {"at": time.monotonic(), "cpu": cpu.user + cpu.system,
                "rss": memory.rss, "pss": getattr(memory, "pss", None),
                "uss": getattr(memory, "uss", None), "threads": thread_states(pid)}


def waits_with_timeout(syscall, args):
    """Whether a thread blocked in `syscall` (its /proc arguments) has a timeout that will
    wake it: select/pselect6 and ppoll take a timeout pointer (NULL: none), poll a number
    of milliseconds (-1: none)."""
    if syscall in ("select", "pselect6"):
        return args[4:5] != ["0x0"]
    if syscall == "ppoll":
        return args[2:3] != ["0x0"]
    if syscall == "poll":
        return len(args) >= 3 and int(args[2], 16) & 0xffffffff != 0xffffffff
    return False


def _describe(syscall, args):
    """What a blocking call waits for; poll's timeout is its third argument (ms)."""
    if syscall == "poll" and len(args) >= 3:
        timeout = int(args[2], 16)
        return "poll, timeout {}".format("none" if timeout >= 0x7fffffff
                                         else "{} ms".format(timeout))
    return syscall + " (with a timeout)" if waits_with_timeout(syscall, args) else syscall


def measure(rigs, seconds):
    """Measure several idle daemons over the same `seconds`; {name: result}."""
    before = {rig.name: _snapshot(rig.pid) for rig in rigs}
    time.sleep(seconds)
    results = {}
    for rig in rigs:
        start, end = before[rig.name], _snapshot(rig.pid)
        span = end["at"] - start["at"]
        threads = []
        for tid, now in sorted(end["threads"].items()):
            then = start["threads"].get(tid, {"voluntary": 0, "involuntary": 0, "cpu": 0.0})
            threads.append({"main": tid == rig.pid,
                            "waits_in": _describe(now["syscall"], now["args"]),
                            "voluntary": now["voluntary"] - then["voluntary"],
                            "involuntary": now["involuntary"] - then["involuntary"],
                            "cpu": now["cpu"] - then["cpu"]})
        results[rig.name] = {
            "seconds": span, "ready_seconds": rig.ready_seconds,
            "rss": end["rss"], "pss": end["pss"], "uss": end["uss"],
            "cpu": end["cpu"] - start["cpu"], "cpu_since_start": end["cpu"],
            "voluntary": sum(t["voluntary"] for t in threads),
            "involuntary": sum(t["involuntary"] for t in threads),
            "threads": threads}
    return results
