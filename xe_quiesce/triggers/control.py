"""The local control socket: the CLI asks the running daemon, so one owner ever freezes.

`<run-dir>/control.sock` (0600 in a 0700 directory; peers must be root, checked with
SO_PEERCRED) takes one JSON line and answers one JSON line:
  {"op": "freeze", "timeout": S} | {"op": "thaw"} | {"op": "status"}
  -> {"ok": true, "result": {...}} or {"ok": false, "error": "...", "busy": bool}
When no daemon listens, the CLI acts itself, with the same guard and journal.
"""
import errno
import fcntl
import json
import os
import socket
import struct
import threading

from ..config import session_timeout
from ..errors import BusyError, QuiesceError

SOCKET_NAME = "control.sock"
LOCK_NAME = "daemon.lock"
MAX_REQUEST = 65536
REQUEST_READ_TIMEOUT = 5.0


def _log():
    """The server's logger. logging is not imported at load: the client side runs in
    `xe-quiesce thaw`, whose start-up is inside two-command scripts' frozen window; the
    daemon, which serves, has logging loaded long before."""
    import logging

    return logging.getLogger(__name__)


def socket_path(run_dir):
    return os.path.join(run_dir, SOCKET_NAME)


class DaemonLock(object):
    """`<run-dir>/daemon.lock`, holding the daemon's pid, locked for its life: one
    daemon per guest.

    A second `xe-quiesce run` would otherwise take over the control socket and the
    host's requests beside the first. A POSIX record lock (lockf), not flock: it is not
    inherited by the guard processes the daemon forks, so a guard still thawing after
    a crash does not keep the restarted daemon out.
    """

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.fd = None

    def acquire(self):
        """Take the lock and write our pid; QuiesceError naming the holder if taken."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise QuiesceError("{}: {}".format(self.path, error.strerror))
            raise QuiesceError("another xe-quiesce daemon (pid {}) is running with run "
                               "directory {}".format(holder or "?", os.path.dirname(self.path)))
        os.ftruncate(fd, 0)
        os.write(fd, "{}\n".format(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ControlServer(object):
    """The CLI's trigger: serves control requests in threads, freeze and thaw through the
    daemon's session slot (a core.slot.SessionSlot), status through `status` (the
    daemon's whole answer).

    Run by the holder of the DaemonLock. It removes only a socket it created, or a dead
    one (nobody accepts on it): never the socket a live daemon serves.
    """

    def __init__(self, config, slot, status):
        from ..protocol import CLI  # the server's: `xe-quiesce thaw`'s client side is lean

        self.trigger = CLI
        self.config = config
        self.slot = slot
        self.path = socket_path(config.state.run_dir)
        self.handlers = {"freeze": self._freeze, "thaw": lambda _request: slot.thaw(self.trigger),
                         "status": lambda _request: status()}
        self.sock = None
        self.created = None  # (st_dev, st_ino) of the socket file we bound

    def _freeze(self, request):
        timeout = session_timeout(request.get("timeout"), self.config.freeze.max_frozen)
        return self.slot.freeze(self.trigger, timeout)

    def status(self):
        """(fields, lines) of `xe-quiesce status`: none of its own, that the daemon
        answers over this socket at all is what it has to say."""
        return {}, []

    def start(self):
        self._remove_dead_socket()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old_umask)
        info = os.stat(self.path)
        self.created = (info.st_dev, info.st_ino)
        self.sock.listen(8)
        thread = threading.Thread(target=self._serve, name="xe-quiesce-control", daemon=True)
        thread.start()

    def _remove_dead_socket(self):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except FileNotFoundError:
            return
        except ConnectionRefusedError:  # left by a daemon that died
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise QuiesceError("{} is served by another process".format(self.path))

    def stop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                info = os.stat(self.path)
                if (info.st_dev, info.st_ino) == self.created:
                    os.unlink(self.path)
            except OSError:
                pass

    def _serve(self):
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            try:
                uid = struct.unpack("3i", conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
                if uid != 0 and uid != os.geteuid():
                    answer = {"ok": False, "error": "permission denied: root only"}
                else:
                    conn.settimeout(REQUEST_READ_TIMEOUT)
                    answer = self._dispatch(_read_line(conn))
                conn.settimeout(None)
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except (OSError, ValueError) as error:
                _log().warning("control socket: bad request: %s", error)

    def _dispatch(self, line):
        try:
            request = json.loads(line.decode("utf-8"))
            handler = self.handlers.get(request.get("op")) if isinstance(request, dict) else None
        except ValueError:
            handler = None
        if handler is None:
            return {"ok": False, "error": "unknown request: {!r}".format(line[:80])}
        try:
            return {"ok": True, "result": handler(request)}
        except BusyError as error:
            return {"ok": False, "busy": True, "error": str(error)}
        except QuiesceError as error:
            return {"ok": False, "error": str(error)}
        except Exception as error:  # keep serving; report what broke
            _log().exception("control request %s failed", request.get("op"))
            return {"ok": False, "error": "{}: {}".format(type(error).__name__, error)}


def _read_line(conn):
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request longer than {} bytes".format(MAX_REQUEST))
    return data


class NoDaemon(Exception):
    """Nothing listens on the control socket: the caller acts itself."""


def request(run_dir, op, wait, **fields):
    """Send one request to the daemon, waiting at most `wait` seconds for the answer.

    Raises NoDaemon (act directly), BusyError or QuiesceError.
    """
    path = socket_path(run_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(wait)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoDaemon(path)
        fields["op"] = op
        sock.sendall(json.dumps(fields).encode() + b"\n")
        line = _read_line(sock)
    except socket.timeout:
        raise QuiesceError("the daemon did not answer {} within {:.0f} s".format(op, wait))
    finally:
        sock.close()
    try:
        answer = json.loads(line.decode("utf-8"))
    except ValueError:
        raise QuiesceError("the daemon sent a malformed answer: {!r}".format(line[:80]))
    if answer.get("ok"):
        return answer.get("result")
    if answer.get("busy"):
        raise BusyError(answer.get("error"))
    raise QuiesceError(answer.get("error") or "the daemon refused {}".format(op))
