"""The domU side of the e2e bed: executes dom0's commands, sent through xenstore.

dom0 writes `e2e/cmd` = "<seq> <op> [args]" (a node it created and gave to the guest); the
harness runs the op and answers `e2e/reply` = "<seq> <base64 of a JSON object>".  No
networking is involved: the guest's only channel to dom0 is xenstore, as for the agent.

The harness is a child subreaper so a daemonised agent killed with SIGKILL is reaped at once
(a zombie would still look alive to a pid-file check), and it keeps nothing on the data
filesystems: its state lives in /run, which is never frozen.
"""

import base64
import ctypes
import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time

sys.path.insert(0, "/e2e")
import xscli  # noqa: E402
from shell import must, run  # noqa: E402

DISKS = {"ext4": ("/dev/xvdb", "/mnt/ext4"), "xfs": ("/dev/xvdc", "/mnt/xfs")}
LVM_PVS = ("/dev/xvdd", "/dev/xvde")
LVM_VG, LVM_LV, LVM_MOUNT = "e2evg", "data", "/mnt/lvm"
# No udev in the domU: libdevmapper makes its own nodes; no devices file either.
LVM_CONFIG = ("activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev"
              " = 0 use_devicesfile = 0 }")
RUN = "/run/e2e"
AGENT_CONFIG = "/etc/xe-quiesce/xe-quiesce.conf"
AGENT_PIDFILE = "/run/xe-quiesce/xe-quiesce.pid"  # the package's init script writes it
PR_SET_CHILD_SUBREAPER = 36


def lvm(*args):
    return run(args[0], "--config", LVM_CONFIG, *args[1:])


def alive(pid):
    """Running and not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def agent_processes():
    """{pid: state} of every process running the agent (daemon and guard)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                argv = fh.read().split(b"\0")
            with open("/proc/%s/stat" % entry) as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(b"xe-quiesce" in a or b"xe_quiesce" in a for a in argv) and b"run" in argv:
            found[int(entry)] = state
    return found


class Harness(object):
    def __init__(self):
        self.mounts = {}
        self.writers = {}
        self.agent_mode = os.environ.get("E2E_AGENT", "none")
        self.agent_proc = None

    # -- disks and workload -------------------------------------------------------------------

    def op_setup(self):
        for _ in range(100):
            if all(os.path.exists(d) for d, _ in DISKS.values()) and all(
                    os.path.exists(p) for p in LVM_PVS):
                break
            time.sleep(0.1)
        for name, (dev, mnt) in DISKS.items():
            os.makedirs(mnt, exist_ok=True)
            must("mount", dev, mnt)
            self.mounts[name] = mnt
        result = {"mounts": dict(self.mounts)}
        code, text = run("modprobe", "dm-mod")
        result["dm_mod"] = code == 0
        if code:
            result["lvm"] = "dm-mod does not load: " + text[-200:]
            return result
        try:
            self.setup_lvm()
        except RuntimeError as exc:
            result["lvm"] = "LVM set-up failed: %s" % exc
            return result
        result["lvm_ok"] = True
        result["lvm"] = " ".join(lvm("lvs", "--noheadings", "-o", "lv_name,devices", LVM_VG)[1]
                                 .split())
        return result

    def setup_lvm(self):
        """A VG over both PVs with one LV filling it (so it spans both), ext4 on it."""
        if lvm("vgs", LVM_VG)[0]:
            must("pvcreate", "--config", LVM_CONFIG, "-q", *LVM_PVS)
            must("vgcreate", "--config", LVM_CONFIG, "-q", LVM_VG, *LVM_PVS)
            must("lvcreate", "--config", LVM_CONFIG, "-q", "-y", "-n", LVM_LV, "-l", "100%FREE",
                 LVM_VG)
            must("mkfs.ext4", "-q", "-L", "e2e-lvm", "/dev/%s/%s" % (LVM_VG, LVM_LV))
        else:
            must("vgchange", "--config", LVM_CONFIG, "-ay", LVM_VG)
        os.makedirs(LVM_MOUNT, exist_ok=True)
        must("mount", "/dev/%s/%s" % (LVM_VG, LVM_LV), LVM_MOUNT)
        self.mounts["lvm"] = LVM_MOUNT

    def op_workload_start(self):
        os.makedirs(RUN, exist_ok=True)
        for name, mnt in self.mounts.items():
            if name not in self.writers or self.writers[name].poll() is not None:
                self.writers[name] = subprocess.Popen(
                    [sys.executable, "/e2e/guest/workload.py", mnt, self.counter(name)])
        return {"pids": {n: p.pid for n, p in self.writers.items()}}

    def counter(self, name):
        return os.path.join(RUN, name + ".count")

    def op_progress(self):
        counts = {}
        for name in self.mounts:
            try:
                with open(self.counter(name)) as fh:
                    counts[name] = int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                counts[name] = -1
        dead = [n for n, p in self.writers.items() if p.poll() is not None]
        return {"counts": counts, "dead_writers": dead}

    def op_freeze(self):
        for name in reversed(sorted(self.mounts)):
            must("fsfreeze", "-f", self.mounts[name])
        return {"frozen": sorted(self.mounts)}

    def op_thaw(self):
        errors = {}
        for name in sorted(self.mounts):
            code, text = run("fsfreeze", "-u", self.mounts[name])
            if code:
                errors[name] = text
        return {"errors": errors}

    def op_shutdown(self):
        for proc in self.writers.values():
            proc.terminate()
        for proc in self.writers.values():
            proc.wait()
        self.op_agent_stop()
        for name in sorted(self.mounts, reverse=True):
            run("umount", self.mounts[name])
        if "lvm" in self.mounts:
            lvm("vgchange", "-an", LVM_VG)
        run("sync")
        return {"bye": True}

    # -- the agent ----------------------------------------------------------------------------

    def agent_command(self):
        """How the agent is started: the package's init script, or the source tree's CLI."""
        if self.agent_mode == "deb":
            return ["/etc/init.d/xe-quiesce", "start"]
        if self.agent_mode == "src":
            return [sys.executable, "-m", "xe_quiesce.cli", "run", "--config", AGENT_CONFIG]
        return None

    def op_agent_start(self, max_frozen=None):
        """Start the agent as the package does (its init script), or from the source tree;
        with max_frozen, its configuration says that first (a restart keeps it)."""
        if max_frozen is not None:
            os.makedirs(os.path.dirname(AGENT_CONFIG), exist_ok=True)
            with open(AGENT_CONFIG, "w") as handle:
                handle.write("[freeze]\nmax-frozen = %s\n" % max_frozen)
        if self.agent_mode == "deb":
            code, text = run("/etc/init.d/xe-quiesce", "start")
            if code:
                raise RuntimeError("init script: exit %d: %s" % (code, text))
        elif self.agent_mode == "src":
            with open("/dev/hvc0", "w") as console:
                self.agent_proc = subprocess.Popen(
                    [sys.executable, "-m", "xe_quiesce.cli", "run", "--config", AGENT_CONFIG],
                    env=dict(os.environ, PYTHONPATH="/e2e/src"), stdin=subprocess.DEVNULL,
                    stdout=console, stderr=console, start_new_session=True)
        else:
            raise RuntimeError("no agent in this image")
        return {"pid": xscli.wait(self.agent_pid, 30, 0.2)}

    def op_agent_stop(self):
        if self.agent_mode == "deb":
            return {"rc": run("/etc/init.d/xe-quiesce", "stop")[0]}
        pid = self.agent_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
        return {"pid": pid}

    def agent_pid(self):
        """The daemon's main process: the init script's pid file, or the process we started.
        (Its deadline guard is a double-forked copy with the same command line.)"""
        if self.agent_mode == "deb":
            try:
                with open(AGENT_PIDFILE) as fh:
                    pid = int(fh.read().strip())
            except (OSError, ValueError):
                return None
        elif self.agent_proc is not None:
            pid = self.agent_proc.pid
        else:
            return None
        return pid if alive(pid) else None

    def op_agent_info(self):
        return {"main": self.agent_pid(), "processes": agent_processes()}

    def op_agent_diagnose(self):
        """Why the agent does not serve: its processes, the init script's view, and (when
        nothing runs) what a foreground `xe-quiesce run` says in 60 s (a service's stderr
        goes nowhere)."""
        found = {"processes": agent_processes()}
        if self.agent_mode == "deb":
            found["init-status"] = run("/etc/init.d/xe-quiesce", "status")[1]
        if not found["processes"]:
            exe = ["xe-quiesce"] if self.agent_mode == "deb" else [
                sys.executable, "-m", "xe_quiesce.cli"]
            found["foreground"] = run("timeout", "60", *(exe + ["run", "--config",
                                                                AGENT_CONFIG]))[1][-1500:]
        return found

    def op_agent_kill(self):
        pid = self.agent_pid()
        if not pid:
            raise RuntimeError("agent not running")
        os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            self.reap()
            if not alive(pid):
                break
            time.sleep(0.1)
        return {"killed": pid, "left": agent_processes()}

    def op_agent_cli(self, *args):
        """Run `xe-quiesce ARGS` the way an admin would (status, plan...)."""
        exe = ["xe-quiesce"] if self.agent_mode == "deb" else [sys.executable, "-m",
                                                              "xe_quiesce.cli"]
        env = dict(os.environ, PYTHONPATH="/e2e/src")
        proc = subprocess.run(exe + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, env=env, timeout=60)
        return {"rc": proc.returncode, "output": proc.stdout[-2500:]}

    def op_ping(self):
        return {"uptime": float(open("/proc/uptime").read().split()[0])}

    # -- the command loop ---------------------------------------------------------------------

    def handle(self, line):
        seq, _, rest = line.partition(" ")
        words = shlex.split(rest)
        try:
            method = getattr(self, "op_" + words[0].replace("-", "_"))
            reply = {"ok": True, "result": method(*words[1:])}
        except Exception as exc:  # reported to dom0, which decides; the loop must go on
            reply = {"ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
        if len(json.dumps(reply)) > 2800:
            reply = {"ok": False, "error": "reply too long: %s" % json.dumps(reply)[:2000]}
        # base64: xenstore-write would turn the JSON's backslash escapes into control bytes.
        encoded = base64.b64encode(json.dumps(reply).encode()).decode()
        xscli.write("e2e/reply", "%s %s" % (seq, encoded))
        return words and words[0] == "shutdown"

    def reap(self):
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass

    def loop(self):
        watch = subprocess.Popen(["xenstore-watch", "e2e/cmd"], stdout=subprocess.PIPE)
        last = None
        xscli.write("e2e/ready", "1")
        while True:
            ready, _, _ = select.select([watch.stdout], [], [], 1.0)
            if ready:
                os.read(watch.stdout.fileno(), 4096)
            self.reap()
            line = xscli.read("e2e/cmd", "")
            if line and line.split(" ", 1)[0] != last:
                last = line.split(" ", 1)[0]
                if self.handle(line):
                    break
        watch.kill()


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    Harness().loop()


if __name__ == "__main__":
    main()
