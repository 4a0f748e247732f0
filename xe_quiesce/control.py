"""The local control socket: the CLI asks the running daemon, so one owner ever freezes.

`<run-dir>/control.sock` (0600 in a 0700 directory; peers must be root, checked with
SO_PEERCRED) takes one JSON line and answers one JSON line:
  {"op": "freeze", "timeout": S} | {"op": "thaw"} | {"op": "status"}
  -> {"ok": true, "result": {...}} or {"ok": false, "error": "...", "busy": bool}
When no daemon listens, the CLI acts itself, with the same guard and journal.
"""
import json
import os
import socket
import struct
import threading

from .errors import BusyError, QuiesceError

SOCKET_NAME = "control.sock"
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


class ControlServer(object):
    """Serves control requests in threads; `handlers` maps op -> callable(request)."""

    def __init__(self, run_dir, handlers):
        self.path = socket_path(run_dir)
        self.handlers = handlers
        self.sock = None

    def start(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old_umask)
        self.sock.listen(8)
        thread = threading.Thread(target=self._serve, name="xe-quiesce-control", daemon=True)
        thread.start()

    def stop(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
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
