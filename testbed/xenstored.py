"""A real xenstored (C or OCaml, Xen 4.17) on a unix socket, for tests and bench (tier 1).

The daemons need the hypervisor; ``xenstored_shim.c``, preloaded, fakes the few
hypervisor calls they make. The shim is compiled here with gcc, once per source
version, into a cache directory, so no build step exists outside the testbed.

oxenstored has a hard-coded socket path and raises RLIMIT_NOFILE to
/proc/sys/fs/nr_open (EPERM here), so it runs in a private mount namespace
(``unshare -m``, root only) where a tmpfs covers /run, the work directory is bound
on /run/xenstored and a file holding 20000 is bound over nr_open. The socket then
appears in the work directory for everyone outside the namespace.
"""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from testbed.waiting import stop_process

BIN_DIR = "/usr/lib/xen-4.17/bin"
SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xenstored_shim.c")
# Version nodes the daemons' references ask for (see the shim's header comment).
SHIM_VERSION_SCRIPT = """\
VERS_1.0 { };
VERS_1.2 { } VERS_1.0;
VERS_4.17.0 { };
GLIBC_2.2.5 { };
"""
GCC_ARGS = ["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror"]
START_TIMEOUT = 10.0
OXENSTORED_CONF = """\
pid-file = {workdir}/xenstored.pid
persistent = false
xenstored-log-file = {workdir}/xenstored.log
access-log-file = {workdir}/trace
access-log-special-ops = true
xenstored-kva = /proc/xen/xsd_kva
xenstored-port = /proc/xen/xsd_port
"""


def cache_dir():
    """Where compiled artefacts live: $XE_QUIESCE_RIG_CACHE, /var/cache or ~/.cache."""
    env = os.environ.get("XE_QUIESCE_RIG_CACHE")
    if env:
        return env
    if os.access("/var/cache", os.W_OK) or os.path.isdir("/var/cache/xe-quiesce/rig"):
        return "/var/cache/xe-quiesce/rig"
    return os.path.join(os.path.expanduser("~"), ".cache", "xe-quiesce", "rig")


def build_shim():
    """Compile the shim if this source was not compiled yet; return the .so path.

    Keyed by a hash of the source, the version script and the flags; written to a
    temporary name and renamed, so concurrent test runs never see half a file.
    """
    with open(SHIM_SOURCE, "rb") as src:
        source = src.read()
    key = hashlib.sha256(source + SHIM_VERSION_SCRIPT.encode() + " ".join(GCC_ARGS).encode())
    folder = cache_dir()
    target = os.path.join(folder, f"xenstored-shim-{key.hexdigest()[:16]}.so")
    if os.path.exists(target):
        return target
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        script = os.path.join(tmp, "shim.map")
        with open(script, "w") as out:
            out.write(SHIM_VERSION_SCRIPT)
        built = os.path.join(tmp, "shim.so")
        subprocess.run(["gcc", *GCC_ARGS, "-o", built, SHIM_SOURCE,
                        f"-Wl,--version-script={script}", "-ldl"],
                       check=True, capture_output=True, text=True)
        os.replace(built, target)
    return target


def missing(flavour):
    """Why this flavour cannot run here, or None."""
    binary = os.path.join(BIN_DIR, "oxenstored" if flavour == "ocaml" else "xenstored")
    if not os.access(binary, os.X_OK):
        return f"{binary} missing: install xen-utils-4.17 (.ci/apt/xenstore.txt)"
    if flavour == "ocaml" and os.geteuid() != 0:
        return "oxenstored needs root (private mount namespace)"
    if not shutil.which("gcc"):
        return "gcc missing (needed to build the xenstored shim)"
    return None


class Xenstored:
    """One xenstored process serving ``socket_path``; restartable on the same path."""

    def __init__(self):
        self.flavour = None
        self.workdir = None
        self.proc = None
        self._own_workdir = False

    @property
    def socket_path(self):
        return os.path.join(self.workdir, "socket")

    @property
    def trace_path(self):
        """C: the ``-T`` trace; OCaml: the access log. Both append across restarts."""
        return os.path.join(self.workdir, "trace")

    @property
    def uri(self):
        """The ``XenstoreClient`` URI of this daemon."""
        return "unix:" + self.socket_path

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, flavour="c", workdir=None):
        """Start the daemon; ``workdir`` defaults to a new short temporary folder.

        Unix socket paths are limited to 107 bytes, hence not pytest's tmp_path.
        """
        if flavour not in ("c", "ocaml"):
            raise ValueError(f"flavour must be 'c' or 'ocaml', not {flavour!r}")
        reason = missing(flavour)
        if reason:
            raise RuntimeError(reason)
        self.flavour = flavour
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="xs-", dir="/tmp")
            self._own_workdir = True
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self._launch()
        return self

    def _command(self, shim):
        if self.flavour == "c":
            return [os.path.join(BIN_DIR, "xenstored"), "-N", "-T", self.trace_path,
                    "-F", os.path.join(self.workdir, "xenstored.pid")]
        conf = os.path.join(self.workdir, "oxenstored.conf")
        with open(conf, "w") as out:
            out.write(OXENSTORED_CONF.format(workdir=self.workdir))
        nr_open = os.path.join(self.workdir, "nr_open")
        with open(nr_open, "w") as out:
            out.write("20000")
        script = ("mount --bind \"$1\" /proc/sys/fs/nr_open && mount -t tmpfs none /run"
                  " && mkdir /run/xenstored && mount --bind \"$2\" /run/xenstored"
                  " && shift 2 && exec \"$@\"")
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                nr_open, self.workdir, os.path.join(BIN_DIR, "oxenstored"),
                "--no-fork", "--config-file", conf]

    def _launch(self):
        shim = build_shim()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        env = dict(os.environ, LD_PRELOAD=shim, XENSTORED_RUNDIR=self.workdir,
                   XENSTORED_PATH=self.socket_path)
        with open(os.path.join(self.workdir, "daemon.log"), "ab") as log:
            # exec all the way down: proc.pid is the daemon itself (signals reach it).
            self.proc = subprocess.Popen(self._command(shim), env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._accepts():
                return
            time.sleep(0.005)
        self.kill()
        with open(os.path.join(self.workdir, "daemon.log"), errors="replace") as log:
            output = log.read()[-2000:]
        raise RuntimeError(f"{self.flavour} xenstored did not come up:\n{output}")

    def _accepts(self):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def stop(self):
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.resume()
        stop_process(self.proc, 5)
        self.proc = None

    def kill(self):
        """SIGKILL, as a crash: connected clients see their connection reset."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self):
        """Stop (if running) and start again on the same socket path, empty store."""
        self.stop()
        self._launch()

    def pause(self):
        """SIGSTOP: connections stay open but nothing is answered (timeout tests)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def cleanup(self):
        """Stop the daemon and remove a work directory this object created."""
        self.stop()
        if self._own_workdir and self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
