"""The references: the raw-ioctl floor, util-linux `fsfreeze` per mount, and qemu-ga.

Each run freezes the given mount points, thaws them at once (zero hold) and returns a
Sample. The raw floor times itself around each ioctl; `fsfreeze` and qemu-ga are
observed from outside, by timestamps around their commands or requests, so their
windows are upper bounds (they include process start-up or a socket round trip).
"""
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

from testbed.waiting import stop_process
from xe_quiesce.linux.fsops import FIFREEZE, FITHAW
from xe_quiesce.linux.rcu import ExpeditedRcu


def sample(window, latency, per_fs=None, **extra):
    """One repetition: the overall window, request->frozen latency, per-fs windows (s)."""
    record = {"window": window, "latency": latency, "per_fs": per_fs}
    record.update(extra)
    return record


def _open_all(mounts):
    return [os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for point in mounts]


def raw_sequential(mounts):
    """The floor: FIFREEZE each in turn, FITHAW each in reverse, fds opened beforehand."""
    fds = _open_all(mounts)
    try:
        starts, frozen, thawed = [], [], [None] * len(fds)
        for fd in fds:
            starts.append(time.monotonic())
            fcntl.ioctl(fd, FIFREEZE, 0)
            frozen.append(time.monotonic())
        for index in reversed(range(len(fds))):
            fcntl.ioctl(fds[index], FITHAW, 0)
            thawed[index] = time.monotonic()
    finally:
        for fd in fds:
            os.close(fd)
    return sample(max(thawed) - starts[0], frozen[-1] - starts[0],
                  [t - s for s, t in zip(starts, thawed)])


def raw_sequential_expedited(mounts):
    """The floor with the kernel's rcu_expedited at 1 around it, as our agent sets it."""
    rcu = ExpeditedRcu()
    if not rcu.ours:
        raise RuntimeError("this machine's /sys/kernel/rcu_expedited is not a free 0")
    rcu.engage()
    try:
        return raw_sequential(mounts)
    finally:
        rcu.release()


def raw_concurrent(mounts):
    """What concurrency alone can give: one thread per FIFREEZE, sequential FITHAW."""
    fds = _open_all(mounts)
    starts, frozen, thawed = [None] * len(fds), [None] * len(fds), [None] * len(fds)

    def freeze(index):
        starts[index] = time.monotonic()
        fcntl.ioctl(fds[index], FIFREEZE, 0)
        frozen[index] = time.monotonic()

    try:
        threads = [threading.Thread(target=freeze, args=(i,)) for i in range(len(fds))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for index in reversed(range(len(fds))):
            if frozen[index] is not None:
                fcntl.ioctl(fds[index], FITHAW, 0)
                thawed[index] = time.monotonic()
    finally:
        for fd in fds:
            os.close(fd)
    if None in thawed:
        raise RuntimeError("a concurrent FIFREEZE failed")
    return sample(max(thawed) - min(starts), max(frozen) - min(starts),
                  [t - s for s, t in zip(starts, thawed)])


def _fsfreeze(flag, point):
    subprocess.run(["fsfreeze", flag, point], check=True)


def fsfreeze_tool(mounts):
    """util-linux `fsfreeze -f` per mount, then `fsfreeze -u` per mount, as a script would."""
    starts, frozen, thawed = [], [], []
    try:
        for point in mounts:
            starts.append(time.monotonic())
            _fsfreeze("-f", point)
            frozen.append(time.monotonic())
    finally:
        for point in mounts[:len(starts)]:
            _fsfreeze("-u", point)
            thawed.append(time.monotonic())
    return sample(thawed[-1] - starts[0], frozen[-1] - starts[0],
                  [t - s for s, t in zip(starts, thawed)])


class QemuGa(object):
    """Debian's qemu-guest-agent on a unix socket, fenced into a private mount namespace.

    Its `guest-fsfreeze-thaw` re-reads the mount table and thaws every frozen filesystem
    it sees, not just those it froze. It therefore runs in its own mount namespace in
    which every loop mount other than the bench's is detached (bench/qga_fence.py), so
    it cannot thaw another program's frozen loop filesystem on this shared machine;
    the remaining mounts (root, /proc, ...) are never frozen by anyone. It is only ever
    asked for `guest-fsfreeze-freeze-list` with the bench's own mount points.
    """

    BINARY = "/usr/sbin/qemu-ga"

    def __init__(self, workdir, allowed_mounts):
        self.workdir = workdir
        self.allowed = list(allowed_mounts)
        self.socket_path = os.path.join(workdir, "qga.sock")
        self.process = None
        self.sock = None
        self.reader = None

    @classmethod
    def available(cls):
        return os.access(cls.BINARY, os.X_OK) and shutil.which("unshare") is not None

    def start(self):
        os.makedirs(self.workdir, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        argv = ["unshare", "-m", "--propagation", "private", sys.executable, "-m",
                "bench.qga_fence"] + self.allowed + [
                "--", self.BINARY, "-m", "unix-listen", "-p", self.socket_path,
                "-t", self.workdir, "-f", os.path.join(self.workdir, "qga.pid"),
                "-l", os.path.join(self.workdir, "qga.log")]
        with open(os.path.join(self.workdir, "fence.log"), "wb") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("qemu-ga exited: " + self._log())
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(self.socket_path)
                break
            except OSError:
                self.sock.close()
                self.sock = None
                time.sleep(0.05)
        if self.sock is None:
            raise RuntimeError("qemu-ga did not listen: " + self._log())
        self.reader = self.sock.makefile("rb")
        self._check_fence()
        return self

    def _log(self):
        with open(os.path.join(self.workdir, "fence.log"), errors="replace") as handle:
            return handle.read()[-2000:]

    def _check_fence(self):
        """Prove from qemu-ga's own mount table that no foreign loop mount is visible."""
        with open("/proc/{}/mountinfo".format(self.process.pid)) as handle:
            for line in handle:
                fields = line.split()
                point = fields[4].encode().decode("unicode_escape")
                if fields[2].startswith("7:") and point not in self.allowed:
                    raise RuntimeError("qemu-ga still sees a foreign loop mount: " + point)

    def call(self, command, **arguments):
        request = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        answer = json.loads(self.reader.readline().decode())
        if "error" in answer:
            raise RuntimeError("qemu-ga {}: {}".format(command, answer["error"]))
        return answer["return"]

    def run(self, mounts):
        """freeze-list with exactly `mounts`, then thaw at once; external timestamps."""
        if not mounts or any(point not in self.allowed for point in mounts):
            raise RuntimeError("refusing to give qemu-ga mounts that are not the bench's")
        started = time.monotonic()
        try:
            count = self.call("guest-fsfreeze-freeze-list", mountpoints=list(mounts))
            frozen = time.monotonic()
        finally:
            thawed_count = self.call("guest-fsfreeze-thaw")
            thawed = time.monotonic()
        if count != len(mounts) or thawed_count != len(mounts):
            raise RuntimeError("qemu-ga froze {} and thawed {} of {} mounts".format(
                count, thawed_count, len(mounts)))
        return sample(thawed - started, frozen - started, None)

    def stop(self):
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
            self.sock = None
        if self.process is not None:
            stop_process(self.process, 10)
