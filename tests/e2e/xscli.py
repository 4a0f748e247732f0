"""xenstore for the e2e bed's own scripts, independent of the product's xenstore client.

In dom0 it talks to xenstored's unix socket through Debian's python3-pyxs, one persistent
connection per thread: the bed polls keys every 50 ms, and a process per read (fork and exec
in a PV dom0 under TCG cost tens of milliseconds each) would eat the CPU the domU needs.
In a domU it uses Debian's xenstore-utils through /dev/xen/xenbus, with the guest's own
permissions (relative paths resolve against the guest's home); the harness reads rarely.
"""

import os
import subprocess
import threading
import time

SOCKET = "/run/xenstored/socket"


class XenstoreError(Exception):
    pass


class _Socket(object):
    """dom0: pyxs over the xenstored socket, one client per thread (pyxs is not shared)."""

    def __init__(self):
        import pyxs
        self.pyxs = pyxs
        self.local = threading.local()

    def client(self):
        if getattr(self.local, "client", None) is None:
            self.local.client = self.pyxs.Client(unix_socket_path=SOCKET)
            self.local.client.connect()
        return self.local.client

    def call(self, name, *args):
        try:
            return getattr(self.client(), name)(*args)
        except self.pyxs.PyXSError as exc:
            raise XenstoreError("%s %s: %s" % (name, args[:1], exc))

    def read(self, path):
        try:
            return self.client().read(path.encode()).decode()
        except self.pyxs.PyXSError:
            return None

    def write(self, path, value):
        self.call("write", path.encode(), value.encode())

    def rm(self, path):
        try:
            self.client().delete(path.encode())
        except self.pyxs.PyXSError:
            pass

    def ls(self, path):
        try:
            return [n.decode() for n in self.client().list(path.encode())]
        except self.pyxs.PyXSError:
            return []

    def exists(self, path):
        return self.call("exists", path.encode())

    def chmod(self, path, perms):
        self.call("set_perms", path.encode(), [p.encode() for p in perms])


class _Cli(object):
    """domU: xenstore-utils over /dev/xen/xenbus."""

    @staticmethod
    def run(*args):
        proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
        return proc.returncode, proc.stdout, proc.stderr.strip()

    def check(self, *args):
        code, out, err = self.run(*args)
        if code:
            raise XenstoreError("%s: %s" % (" ".join(args), err or "exit %d" % code))
        return out

    def read(self, path):
        code, out, _ = self.run("xenstore-read", path)
        return (out[:-1] if out.endswith("\n") else out) if code == 0 else None

    def write(self, path, value):
        self.check("xenstore-write", path, value)

    def rm(self, path):
        self.run("xenstore-rm", path)

    def ls(self, path):
        code, out, _ = self.run("xenstore-list", path)
        return out.split() if code == 0 else []

    def exists(self, path):
        return self.run("xenstore-exists", path)[0] == 0

    def chmod(self, path, perms):
        self.check("xenstore-chmod", path, *perms)


_backend = _Socket() if os.path.exists(SOCKET) else _Cli()


def read(path, default=None):
    """The value, or default when the node does not exist (or cannot be read)."""
    value = _backend.read(path)
    return default if value is None else value


def write(path, value):
    _backend.write(path, value)


def rm(path):
    _backend.rm(path)


def ls(path):
    return _backend.ls(path)


def exists(path):
    return _backend.exists(path)


def chmod(path, perms, recursive=False):
    """perms like ["n5"] (owner domid 5, others none) or ["n0", "r5"]."""
    _backend.chmod(path, perms)
    if recursive:
        for child in ls(path):
            chmod(path + "/" + child, perms, True)


def wait(predicate, timeout, interval=0.1):
    """Poll until predicate() returns something truthy; that value, or the last one at the
    timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
