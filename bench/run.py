"""python -m bench.run [--profile full|quick|smoke] --json FILE: measure everything, once.

Every run of phases (1) and (2) is also timed by the kernel's syscall tracepoints
(bench/ktrace.py), the same ruler for every tool, beside each tool's own view.
Phases, all in this one run: (1) frozen window and request->frozen for N filesystems,
every tool and trigger interleaved repetition by repetition; (2) the same with unsynced
data; (3) who thaws what (a filesystem frozen by someone else); (4) the daemon without a
prompt reaper; (5) the idle daemon; (6) many agents on one xenstored. Results go to a
JSON file that bench.report and bench.plot turn into docs/benchmarks.md and its figures.

Before each measured run the bench waits SETTLE seconds: a FIFREEZE right after the last
FITHAW skips the kernel's RCU grace periods (rcu_sync is still in its slow-path state),
which would make whichever tool runs second look about 100x faster than it is.
"""
import argparse
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
import types

from testbed.loopfs import is_frozen
from testbed.xenstored import Xenstored
from xe_quiesce import __version__, tls
from xe_quiesce.linux import rcu
from xe_quiesce.linux.fsops import FIFREEZE, FITHAW, FsOps
from xe_quiesce.triggers import control

from . import idle, ktrace, others, scale
from .agent import AgentRig
from .filesystems import Workspace, assert_ours, dirty

SETTLE = 0.2
MAX_ERRORS = 10
PROFILES = {
    "full": dict(reps=20, sizes=[1, 8, 32], dirty_sizes=[1, 8], dirty_mib=64,
                 idle_seconds=60, scale_agents=100, scale_rounds=3, reaping_reps=3),
    "quick": dict(reps=3, sizes=[1, 8, 32], dirty_sizes=[1, 8], dirty_mib=64,
                  idle_seconds=10, scale_agents=20, scale_rounds=1, reaping_reps=2),
    "smoke": dict(reps=1, sizes=[1], dirty_sizes=[1], dirty_mib=4,
                  idle_seconds=1, scale_agents=2, scale_rounds=1, reaping_reps=1),
}
# Our agent's variants for the unsynced-data runs: (sync-first, concurrent).
VARIANTS = {"ours-control": (True, True), "ours-nosync": (False, True),
            "ours-seq": (True, False), "ours-nosync-seq": (False, False)}
TRIGGERS = ("control", "cli", "frozen", "xenstore", "xo")


def knob_left_alone(method):
    """Every run must end with rcu_expedited back at 0, or the runs after it would be
    flattered; a run that leaves it at 1 is an error (and the knob is put back)."""
    path = rcu.knob_path()
    if rcu.current(path) == "0":
        return
    rcu.restore(path)
    raise RuntimeError("{} left {} at 1".format(method, path))


def say(text):
    print("[bench {}] {}".format(time.strftime("%H:%M:%S"), text), flush=True)


def _version(command):
    try:
        out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def _package(name):
    return _version(["dpkg-query", "-W", "-f", "${Version}", name])


def machine():
    with open("/proc/cpuinfo") as handle:
        model = next((line.split(":", 1)[1].strip() for line in handle
                      if line.startswith("model name")), platform.machine())
    with open("/proc/meminfo") as handle:
        mem_kib = int(handle.readline().split()[1])
    with open("/etc/os-release") as handle:
        release = dict(line.rstrip().split("=", 1) for line in handle if "=" in line)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = _version(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    dirty_tree = _version(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": model, "cpus": os.cpu_count(),
        "memory_gib": round(mem_kib / 2 ** 20, 1), "kernel": platform.release(),
        "os": release.get("PRETTY_NAME", "").strip('"'), "python": platform.python_version(),
        "xe_quiesce": __version__, "commit": (commit or "?") + (" (+ uncommitted)" if dirty_tree
                                                                  else ""),
        "qemu_guest_agent": _package("qemu-guest-agent"), "util_linux": _package("util-linux"),
        "e2fsprogs": _package("e2fsprogs"), "xfsprogs": _package("xfsprogs"),
        "xen_utils": _package("xen-utils-4.17"), "load_start": os.getloadavg(),
    }


class Bench(object):
    def __init__(self, profile, out):
        self.p = PROFILES[profile]
        self.profile = profile
        self.out = out
        self.results = {"profile": profile, "params": dict(self.p, settle=SETTLE),
                        "machine": machine(), "clean": {}, "dirty": {}, "errors": [],
                        "phases": {}}
        self.workspace = self.xenstored = self.qga = self.ktrace = None
        self.rigs = {}
        self.filesystems = []
        self.next_domid = 10

    # -- set-up -----------------------------------------------------------------------

    def rig(self, name, mounts, sync_first=True, concurrent=True, xo=False, reaper=True,
            expedite=True):
        rig = AgentRig(name, self.workspace.path, self.xenstored, mounts, self.next_domid,
                       sync_first=sync_first, concurrent=concurrent, xo=xo,
                       tls_dir=self.workspace.sub("tls"), reaper=reaper, expedite=expedite)
        self.next_domid += 1
        self.rigs[name] = rig
        return rig.start()

    def set_up(self):
        largest = max(self.p["sizes"] + self.p["dirty_sizes"])
        say("creating {} loop filesystems (ext4/xfs alternating) on a tmpfs".format(
            largest + 1))
        knob_left_alone("the machine before the bench")
        self.workspace = Workspace()
        # One more than the largest set: the filesystem "someone else" froze (phase 3).
        self.filesystems = self.workspace.make_set("fs", largest + 1)
        self.mounts = assert_ours(self.filesystems)
        # The sync hook's certificate, made once here so no READY time includes it.
        tls.certificate_pair(types.SimpleNamespace(cert_file="", key_file="",
                                                   tls_dir=self.workspace.sub("tls")))
        self.xenstored = Xenstored().start()
        if others.QemuGa.available():
            self.qga = others.QemuGa(self.workspace.sub("qga"), self.mounts).start()
        else:
            say("qemu-ga not installed: its rows are left out")
        for n in sorted(set(self.p["sizes"] + self.p["dirty_sizes"])):
            self.rig("ours-n{}".format(n), self.mounts[:n], xo=True)
        for n in self.p["sizes"]:
            self.rig("ours-noexp-n{}".format(n), self.mounts[:n], expedite=False)
        for n in self.p["dirty_sizes"]:
            for method, (sync_first, concurrent) in VARIANTS.items():
                if method != "ours-control" and (concurrent or n > 1):
                    self.rig("{}-n{}".format(method, n), self.mounts[:n], sync_first,
                             concurrent)
        self.results["ready"] = [rig.ready_seconds for rig in self.rigs.values()]

    def tear_down(self):
        for rig in list(self.rigs.values()):
            try:
                rig.stop()
            except Exception as error:
                say("stopping {}: {}".format(rig.name, error))
        self.rigs = {}
        if self.qga is not None:
            self.qga.stop()
            self.qga = None
        if self.xenstored is not None:
            self.xenstored.cleanup()
            self.xenstored = None
        if self.workspace is not None:
            self.workspace.close()
            self.workspace = None

    # -- measuring ------------------------------------------------------------------------

    def methods(self, n, unsynced):
        mounts = self.mounts[:n]
        table = {"raw-seq": lambda: others.raw_sequential(mounts),
                 "raw-seq-exp": lambda: others.raw_sequential_expedited(mounts)}
        if n > 1:
            table["raw-conc"] = lambda: others.raw_concurrent(mounts)
        table["fsfreeze"] = lambda: others.fsfreeze_tool(mounts)
        if self.qga is not None:
            table["qemu-ga"] = lambda: self.qga.run(mounts)
        default = self.rigs["ours-n{}".format(n)]
        if unsynced:
            table["ours-control"] = default.via_control
            for method in VARIANTS:
                name = "{}-n{}".format(method, n)
                if name in self.rigs:
                    table[method] = self.rigs[name].via_control
        else:
            for trigger in TRIGGERS:
                table["ours-" + trigger] = (lambda t: lambda: default.run(t))(trigger)
            table["ours-noexp"] = self.rigs["ours-noexp-n{}".format(n)].via_control
        return table

    def thaw_everything(self):
        """After a failed run: end any session a daemon still holds, then FITHAW every
        bench filesystem (EINVAL when not frozen)."""
        for rig in self.rigs.values():
            try:
                control.request(rig.run_dir, "thaw", 30)
            except Exception:
                pass
        ops = FsOps()
        for point in self.mounts:
            fd = ops.open(point)
            try:
                ops.thaw(fd)
            finally:
                ops.close(fd)

    def measure(self, phase, sizes, unsynced):
        store = self.results[phase]
        for rep in range(self.p["reps"]):
            for n in sizes:
                table = self.methods(n, unsynced)
                names = list(table)
                shift = rep % len(names)  # rotate, so no method always runs first
                for name in names[shift:] + names[:shift]:
                    if unsynced:
                        dirty(self.filesystems[:n], self.p["dirty_mib"])
                    time.sleep(SETTLE)
                    self.kernel_calls()
                    try:
                        result = table[name]()
                        knob_left_alone(name)
                        kernel = self.kernel_calls()
                        if kernel is not None:
                            result["kernel"] = ktrace.summary(kernel)
                    except Exception as error:
                        self.thaw_everything()
                        self.results["errors"].append({"phase": phase, "n": n, "method": name,
                                                       "rep": rep, "error": repr(error)})
                        say("ERROR {} N={} {}: {!r}".format(phase, n, name, error))
                        if len(self.results["errors"]) > MAX_ERRORS:
                            raise RuntimeError("too many errors")
                        continue
                    store.setdefault(str(n), {}).setdefault(name, []).append(result)
            say("{}: repetition {}/{} done".format(phase, rep + 1, self.p["reps"]))

    def start_trace(self):
        """The kernel's ruler, when this machine has it (bench/ktrace.py)."""
        reason = ktrace.unavailable_reason()
        self.results["kernel_trace"] = {"on": reason is None, "reason": reason}
        if reason is None:
            self.ktrace = ktrace.KernelTrace("xe-quiesce-bench-{}".format(os.getpid())).start()
        else:
            say("kernel tracepoints not used: " + reason)

    def stop_trace(self):
        if self.ktrace is not None:
            self.ktrace.stop()
            self.ktrace = None

    def kernel_calls(self):
        """The FIFREEZE/FITHAW calls since the last call (None without tracing)."""
        return self.ktrace.take() if self.ktrace is not None else None

    def isolation(self):
        """Freeze one filesystem as 'someone else', then let each tool freeze and thaw
        the others: is that one still frozen afterwards?"""
        n = min(8, len(self.mounts) - 1)
        mounts, extra = self.mounts[:n], self.mounts[n]
        result = {"n": n}
        fd = os.open(extra, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, FIFREEZE, 0)
            time.sleep(SETTLE)
            self.rigs["ours-n{}".format(n)].via_control()
            result["ours"] = {"still_frozen": is_frozen(extra)}
            if self.qga is not None:
                count = self.qga.call("guest-fsfreeze-freeze-list", mountpoints=mounts)
                thawed = self.qga.call("guest-fsfreeze-thaw")
                result["qemu-ga"] = {"frozen": count, "thawed": thawed,
                                     "still_frozen": is_frozen(extra)}
        finally:
            try:
                fcntl.ioctl(fd, FITHAW, 0)
            except OSError:
                pass
            os.close(fd)
        self.results["isolation"] = result

    def reaping(self):
        """The same daemon straight under this machine's PID 1, which reaps orphans late:
        how much later the thaw is answered (the filesystems are thawed just as fast)."""
        rig = self.rig("ours-n1-pid1", self.mounts[:1], reaper=False)
        samples = []
        for _ in range(self.p["reaping_reps"]):
            time.sleep(SETTLE)
            samples.append(rig.via_control())
        self.results["reaping"] = {"without_reaper": samples}

    def idle(self):
        say("idle daemons: {} s".format(self.p["idle_seconds"]))
        rigs = [self.rig("idle-default", self.mounts[:1]),
                self.rig("idle-xo", self.mounts[:1], xo=True)]
        self.results["idle"] = idle.measure(rigs, self.p["idle_seconds"])
        for rig in rigs:
            rig.stop()
            del self.rigs[rig.name]

    def scale(self):
        count = self.p["scale_agents"]
        say("scale: {} agents on one xenstored".format(count))
        started = time.monotonic()
        filesystems, rigs = scale.start_agents(self.workspace, self.xenstored, count)
        try:
            result = {"agents": count, "setup_seconds": time.monotonic() - started,
                      "ready": [rig.ready_seconds for rig in rigs], "rounds": []}
            for round_index in range(self.p["scale_rounds"]):
                time.sleep(1.0)
                result["rounds"].append(scale.quiesce_all(rigs))
                ok = sum(1 for vm in result["rounds"][-1]["vms"] if vm["ok"])
                say("scale round {}: {}/{} succeeded".format(round_index + 1, ok, count))
        finally:
            scale.stop_agents(rigs)
            self.workspace.destroy(filesystems)
        self.results["scale"] = result

    def phase(self, name, function, *args):
        started = time.monotonic()
        say("phase {}".format(name))
        function(*args)
        self.results["phases"][name] = {"seconds": time.monotonic() - started,
                                        "load": os.getloadavg()}

    def run(self):
        started = time.monotonic()
        try:
            self.start_trace()  # before anything is forked: the daemons are traced too
            self.phase("set-up", self.set_up)
            self.phase("window", self.measure, "clean", self.p["sizes"], False)
            self.phase("unsynced", self.measure, "dirty", self.p["dirty_sizes"], True)
            self.phase("isolation", self.isolation)
            self.phase("reaping", self.reaping)
            self.stop_trace()
            for name in [name for name in self.rigs]:
                self.rigs.pop(name).stop()
            if self.qga is not None:
                self.qga.stop()
                self.qga = None
            self.phase("idle", self.idle)
            keep = self.filesystems[:1]
            self.workspace.destroy(self.filesystems[1:])
            self.filesystems = keep
            self.mounts = self.mounts[:1]
            self.phase("scale", self.scale)
        finally:
            self.stop_trace()
            self.tear_down()
            self.results["machine"]["load_end"] = os.getloadavg()
            self.results["seconds"] = time.monotonic() - started
            os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
            with open(self.out, "w") as handle:
                json.dump(self.results, handle, indent=1)
        say("done in {:.0f} s; results in {}".format(self.results["seconds"], self.out))
        return self.results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--json", default="artifacts/bench/results.json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the bench needs root (loop devices, mount, FIFREEZE)")
    Bench(args.profile, args.json).run()


if __name__ == "__main__":
    sys.exit(main())
