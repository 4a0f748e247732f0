"""A xenstore client that survives the Linux xenbus device's quirks.

Why not plain ``pyxs.Client``: its router thread matches replies by request id and
dies (leaving the caller blocked forever) when a reply carries an id it does not know.
The Linux ``/dev/xen/xenbus`` device does exactly that: old kernels answer WATCH and
UNWATCH with a made-up reply whose req_id and tx_id are 0, 4.11-era kernels put their
own counter in every reply, and watch events can arrive before a request's reply
(docs/packaging.md, "The xenbus device"). pyxs also has no timeouts and refuses
empty values and any byte outside 0x20-0x7f.

So this module keeps pyxs for what is safe (``Packet``/``Op``, the wire struct, path
and permission checks) and owns the connection and the routing itself:

- one request in flight at a time; the reply is the next packet of the request's
  type (or ERROR), whatever its req_id; WATCH_EVENT packets go to the event queue
  whatever order they come in;
- every request has a deadline (``timeout``) and raises ``XenstoreTimeout`` after it.
  A timed-out connection is closed, so a late reply can never be taken as the answer
  to a later request;
- connecting is retried with a bounded back-off within ``timeout``, the first time
  too: right after a xenstored restart every client reconnects at once and a full
  listen backlog answers EAGAIN;
- on EOF or an I/O error (xenstored restart, suspend/resume) the client reopens the
  connection, re-registers its watches (with a budget of its own, ``timeout``),
  calls ``on_reconnect`` and re-sends the request if that is safe: reads and watch
  (un)registration always, a WRITE, RM, MKDIR or SET_PERMS only if it had not been
  sent whole. One that had may have been applied, and a re-send could overwrite
  what another party wrote since, so it raises ``XenstoreConnectionError`` (outcome
  unknown) and the caller decides;
- values written with ``write`` must be printable ASCII: anything else raises
  ``XenstoreValueError`` before a byte is sent. The empty value is sent as a raw
  packet (pyxs 0.4.1 refuses it). ``write_bytes`` writes raw bytes (the dom0
  simulator uses it to plant garbage).
- ``read`` decodes values as UTF-8 and raises ``XenstoreValueError`` for bytes that
  are not: a garbage value is a clear error at the read, never a crash later.
  ``read_bytes`` returns the raw value.

Thread safety: none. The daemon owns one client and calls it from one thread;
``on_reconnect`` runs in that thread, inside whichever call noticed the drop.
"""
import collections
import errno
import logging
import math
import os
import select
import socket
import time

from pyxs._internal import NUL, Op, Packet
from pyxs.exceptions import PyXSError
from pyxs.helpers import check_path, check_perms, check_watch_path

LOG = logging.getLogger(__name__)

XENBUS_DEVICES = ("/dev/xen/xenbus", "/proc/xen/xenbus")
PAYLOAD_MAX = 4096
_HEADER = Packet._struct  # four native uint32: type, req_id, tx_id, len
_EVENT_QUEUE_MAX = 4096
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
# An unbounded wait_event still gives up reconnecting after this long, so that its
# caller can look at its stop flag while xenstore is unreachable.
_RECONNECT_STEP = 1.0


class XenstoreError(Exception):
    """Any xenstore failure; ``code`` is the xenstore error name (``EINVAL``) if any."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class XenstoreNotFound(XenstoreError):
    """The node does not exist (ENOENT)."""


class XenstorePermissionError(XenstoreError):
    """xenstored refused the access (EACCES), e.g. a guest writing a dom0-owned node."""


class XenstoreTimeout(XenstoreError):
    """No reply within the request timeout; the connection was reset."""


class XenstoreConnectionError(XenstoreError):
    """The connection could not be (re-)established."""


class XenstoreValueError(XenstoreError, ValueError):
    """A path, value, token, permission or URI this client will not send or accept."""


_ERRORS = {"ENOENT": XenstoreNotFound, "EACCES": XenstorePermissionError}


# Requests whose re-send after a drop cannot undo anything another party did since.
_IDEMPOTENT = frozenset((Op.READ, Op.DIRECTORY, Op.GET_PERMS, Op.GET_DOMAIN_PATH,
                         Op.WATCH, Op.UNWATCH))


class _Dropped(Exception):
    """The connection ended (EOF, I/O error, garbage framing); reconnect.

    ``sent`` is True once the whole request was written: it may then have reached
    xenstored (a partial message is discarded when the connection goes).
    """

    def __init__(self, message, sent=False):
        super().__init__(message)
        self.sent = sent


def parse_uri(uri):
    """Return ``(kind, path)`` for a connection URI; ``path`` None means auto-detect.

    ``xenbus`` (the guest device, auto-detected), ``xenbus:PATH`` and ``unix:PATH``
    (a dom0 xenstored socket).
    """
    if uri == "xenbus":
        return "xenbus", None
    kind, sep, path = (uri or "").partition(":")
    if sep and path and kind in ("xenbus", "unix"):
        return kind, path
    raise XenstoreValueError(
        f"unknown xenstore URI {uri!r}: expected 'xenbus', 'xenbus:PATH' or "
        "'unix:PATH'")


def _find_xenbus():
    for path in XENBUS_DEVICES:
        if os.path.exists(path):
            return path
    raise XenstoreConnectionError(
        "no xenbus device (tried {}); is this a Xen guest with xenfs?".format(
            ", ".join(XENBUS_DEVICES)))


class _Channel:
    """One open connection: a byte stream re-framed into packets, with deadlines.

    The Linux device may return the end of one message and the start of the next in
    one read, or half a header, so framing is done on a buffer, never per read().
    Reads happen only after select() reports data: a read on an empty xenbus queue
    blocks even with a zero length.
    """

    def __init__(self, kind, path):
        self.name = f"{kind}:{path}"
        self._sock = None
        try:
            if kind == "unix":
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                # Never blocks: a full listen backlog is EAGAIN at once, and the
                # caller retries with back-off within its deadline.
                self._sock.setblocking(False)
                self._sock.connect(path)
                self.fd = self._sock.fileno()
            else:
                # O_NOCTTY: harmless on the device, and keeps a pty (the test
                # emulator) from becoming the daemon's controlling terminal.
                self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            if self._sock is not None:
                self._sock.close()
            busy = " (listen backlog full)" if exc.errno == errno.EAGAIN else ""
            raise XenstoreConnectionError(
                f"cannot connect to {self.name}{busy}: {exc}")
        self._buf = bytearray()

    def close(self):
        if self._sock is not None:
            self._sock.close()
        else:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def send(self, packet, deadline):
        data = memoryview(_HEADER.pack(packet.op, packet.rq_id, packet.tx_id,
                                       packet.size) + packet.payload)
        while data:
            # Written at once, waited on only when the socket's buffer is full: the
            # Linux xenbus device's poll() never reports writable (its writes do not
            # block), and a select() per request is a system call for nothing.
            try:
                data = data[os.write(self.fd, data):]
            except InterruptedError:
                continue
            except BlockingIOError:
                if self._sock is not None and not _wait_fd(self.fd, deadline, write=True):
                    raise XenstoreTimeout(f"timed out sending to {self.name}")
            except OSError as exc:
                raise _Dropped(f"write to {self.name}: {exc}")

    def recv(self, deadline, wake_fd=None):
        """Next packet as ``(op, rq_id, tx_id, payload)``, or None at the deadline or
        as soon as ``wake_fd`` is readable."""
        while True:
            packet = self._frame()
            if packet is not None:
                return packet
            if not _wait_fd(self.fd, deadline, wake_fd=wake_fd):
                return None
            try:
                chunk = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:  # ECONNRESET, EIO from a hung-up pty, ...
                raise _Dropped(f"read from {self.name}: {exc}")
            if not chunk:
                raise _Dropped(f"{self.name} closed the connection")
            self._buf += chunk

    def _frame(self):
        if len(self._buf) < _HEADER.size:
            return None
        op, rq_id, tx_id, size = _HEADER.unpack_from(self._buf)
        if size > PAYLOAD_MAX:
            raise _Dropped(f"{self.name} sent a {size}-byte payload: stream out of step")
        end = _HEADER.size + size
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[_HEADER.size:end])
        del self._buf[:end]
        return op, rq_id, tx_id, payload


def _wait_fd(fd, deadline, write=False, wake_fd=None):
    """Wait until fd is ready; False when the deadline (math.inf: none) passes first or
    ``wake_fd`` (a signal wake-up pipe) is readable."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readers = [] if write else [fd]
        if wake_fd is not None:
            readers.append(wake_fd)
        try:
            readable, writable, _ = select.select(readers, [fd] if write else [], [],
                                                  None if left == math.inf else left)
        except InterruptedError:
            continue
        return fd in (writable if write else readable)


def _encode(kind, text):
    """Encode a path, token or permission to ASCII bytes, or raise a clear error."""
    if not isinstance(text, str):
        raise XenstoreValueError(f"xenstore {kind} must be a str, not {text!r}")
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise XenstoreValueError(f"xenstore {kind} {text!r} is not ASCII")


def _path(path, watch=False):
    raw = _encode("path", path)
    try:
        (check_watch_path if watch else check_path)(raw)
    except PyXSError:
        raise XenstoreValueError(
            f"invalid xenstore path {path!r}: use A-Z a-z 0-9 - / _ @, no '//', no "
            "trailing '/', no NUL")
    return raw


def _value(path, value):
    raw = _encode("value for " + path, value)
    for offset, byte in enumerate(raw):
        if byte < 0x20 or byte > 0x7e:
            raise XenstoreValueError(
                f"value for {path} has control character {chr(byte)!r} at offset {offset}: "
                "this agent writes printable ASCII only")
    return raw


def _token(token):
    raw = _encode("watch token", token)
    if not raw or any(b < 0x21 or b > 0x7e for b in raw):
        raise XenstoreValueError(
            f"watch token {token!r} must be non-empty printable ASCII without spaces")
    return raw


class XenstoreClient:
    """A single-threaded xenstore client over xenbus or a xenstored unix socket."""

    def __init__(self, uri="xenbus", timeout=10.0):
        self.uri = uri
        self._kind, self._path = parse_uri(uri)
        if not timeout or timeout <= 0:
            raise XenstoreValueError(f"xenstore timeout must be > 0, not {timeout!r}")
        self.timeout = float(timeout)
        #: Called with no argument after a dropped connection was re-established and
        #: the watches re-registered (so the daemon can advertise again).
        self.on_reconnect = None
        self._channel = None
        self._ever_connected = False
        self._next_rq_id = 0
        self._watches = collections.OrderedDict()  # (path, token) -> None
        self._events = collections.deque()

    def __repr__(self):
        return f"XenstoreClient({self.uri!r})"

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def connected(self):
        return self._channel is not None

    # -- connection ------------------------------------------------------------

    def connect(self):
        """Open the connection, retrying with back-off for up to ``timeout`` s.

        Raises ``XenstoreConnectionError`` after that, or at once if there is no
        xenbus device at all. After a drop this is a reconnect like any other
        call's, with watch re-registration and ``on_reconnect``.
        """
        self._ensure_connected(time.monotonic() + self.timeout)

    def close(self):
        """Close the connection; the next call opens it again."""
        self._drop()
        self._ever_connected = False
        self._watches.clear()
        self._events.clear()

    def _open(self, path):
        self._channel = _Channel(self._kind, path)
        self._ever_connected = True
        LOG.debug("connected to %s", self._channel.name)

    def _drop(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _ensure_connected(self, deadline):
        """(Re)connect with bounded back-off until ``deadline``, re-register the
        watches, fire on_reconnect.

        Re-registration gets its own budget of ``timeout`` s, not what is left of
        the caller's deadline (a 0.25 s wait_event would time it out spuriously,
        again at every call). If it fails anyway, the client stays disconnected with
        its watches remembered, so the next call tries again.
        """
        if self._channel is not None:
            return
        reconnect = self._ever_connected
        path = self._path or _find_xenbus()  # no device at all is not worth retrying
        start = time.monotonic()
        delay = _BACKOFF_FIRST
        while True:
            try:
                self._open(path)
                register_deadline = time.monotonic() + self.timeout
                for watch_path, token in list(self._watches):
                    self._register(watch_path, token, register_deadline)
                break
            except (XenstoreConnectionError, _Dropped) as exc:
                self._drop()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise XenstoreConnectionError(
                        f"cannot reach xenstore at {self.uri} "
                        f"(gave up after {time.monotonic() - start:.1f} s): {exc}")
                time.sleep(min(delay, left))
                delay = min(delay * 2, _BACKOFF_MAX)
            except XenstoreTimeout as exc:
                self._drop()
                raise XenstoreConnectionError(
                    f"re-registering {len(self._watches)} watch(es) at {self.uri} "
                    f"failed, the next call retries: {exc}")
        if reconnect:
            LOG.info("reconnected to %s; %d watch(es) re-registered",
                     self.uri, len(self._watches))
            if self.on_reconnect is not None:
                try:
                    self.on_reconnect()
                except Exception:  # the callback's failure must not fail this call
                    LOG.exception("on_reconnect callback failed")

    # -- requests --------------------------------------------------------------

    def _transact(self, op, payload, deadline):
        """Send one request on the open channel and return its reply packet.

        The reply is the first non-event packet of the request's type or ERROR:
        req_id is not trusted (0 for made-up WATCH replies, a kernel counter on
        4.11-era kernels). Raises _Dropped or XenstoreTimeout.
        """
        self._next_rq_id = self._next_rq_id % 0xFFFFFFFF + 1
        rq_id = self._next_rq_id
        self._channel.send(Packet(op, payload, rq_id, 0), deadline)
        while True:
            try:
                packet = self._channel.recv(deadline)
            except _Dropped as exc:
                exc.sent = True
                raise
            if packet is None:
                raise XenstoreTimeout(
                    f"no reply to {Op._fields[op]} within {self.timeout:g} s from {self.uri}")
            if packet[0] == Op.WATCH_EVENT:
                self._queue_event(packet[3])
            elif packet[0] in (op, Op.ERROR):
                if packet[1] != rq_id:
                    LOG.debug("reply to %s carries req_id %d, sent %d",
                              Op._fields[op], packet[1], rq_id)
                return packet
            else:
                LOG.warning("ignoring unexpected xenstore packet type %d while "
                            "waiting for %s", packet[0], Op._fields[op])

    def _request(self, op, what, *args):
        """Run one request to completion (reconnecting as needed); return its payload."""
        payload = b"".join(arg + NUL for arg in args)
        if op == Op.WRITE:  # the value is raw, with no trailing NUL
            payload = payload[:-1]
        if len(payload) > PAYLOAD_MAX:
            raise XenstoreValueError(
                f"{Op._fields[op]} {what}: request of {len(payload)} bytes exceeds the "
                f"{PAYLOAD_MAX}-byte xenstore limit")
        deadline = time.monotonic() + self.timeout
        while True:
            self._ensure_connected(deadline)
            try:
                reply = self._transact(op, payload, deadline)
                break
            except _Dropped as exc:
                LOG.warning("xenstore connection lost during %s %s: %s",
                            Op._fields[op], what, exc)
                self._drop()
                if exc.sent and op not in _IDEMPOTENT:
                    raise XenstoreConnectionError(
                        f"xenstore {Op._fields[op]} {what}: the connection to "
                        f"{self.uri} was lost after the request was sent; its outcome "
                        "is unknown and it was not re-sent (a newer value may be "
                        f"there now): {exc}")
            except XenstoreTimeout:
                self._drop()
                raise
        if reply[0] == Op.ERROR:
            code = reply[3].rstrip(NUL).decode("ascii", "replace")
            number = getattr(errno, code, None)
            reason = f" ({os.strerror(number)})" if isinstance(number, int) else ""
            raise _ERRORS.get(code, XenstoreError)(
                f"xenstore {Op._fields[op]} {what}: {code}{reason}", code)
        return reply[3]

    def _register(self, path, token, deadline):
        """Send WATCH on the open channel (used at re-registration time)."""
        reply = self._transact(Op.WATCH, path + NUL + token + NUL, deadline)
        if reply[0] == Op.ERROR and reply[3].rstrip(NUL) != b"EEXIST":
            LOG.error("re-registering watch %s failed: %s", path, reply[3])

    # -- events ----------------------------------------------------------------

    def _queue_event(self, payload):
        parts = payload.split(NUL)
        if len(parts) < 2:
            LOG.warning("ignoring malformed watch event %r", payload)
            return
        if len(self._events) >= _EVENT_QUEUE_MAX:
            self._events.popleft()
            LOG.warning("watch event queue full; oldest event dropped")
        self._events.append((parts[0].decode("ascii", "replace"),
                             parts[1].decode("ascii", "replace")))

    def _pop_event(self):
        """The oldest queued event of a watch still registered (stale ones dropped)."""
        tokens = {token.decode("ascii") for _path, token in self._watches}
        while self._events:
            event = self._events.popleft()
            if event[1] in tokens:
                return event
        return None

    def wait_event(self, timeout, wake_fd=None):
        """Return the next ``(path, token)`` watch event, or None after ``timeout`` s
        (None: no limit) or as soon as ``wake_fd`` is readable.

        Events are hints: xenstore fires once at registration and may fire
        spuriously, so re-read the node. A dropped connection is re-established
        within this call's timeout, at most _RECONNECT_STEP s of it when there is
        none (re-registering the watches may take up to the client's ``timeout``
        more); if it cannot be, the call returns None and ``connected`` stays False.
        A daemon waits with no timeout and its signal wake-up pipe as ``wake_fd``,
        so that an idle agent does not wake up periodically.
        """
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            event = self._pop_event()
            if event is not None:
                return event
            if self._channel is None:
                try:
                    self._ensure_connected(deadline if timeout is not None
                                          else time.monotonic() + _RECONNECT_STEP)
                except (XenstoreConnectionError, XenstoreTimeout) as exc:
                    LOG.warning("xenstore still unreachable: %s", exc)
                    return None
                continue  # re-registering may have queued events
            try:
                packet = self._channel.recv(deadline, wake_fd)
            except _Dropped as exc:
                LOG.warning("xenstore connection lost while waiting: %s", exc)
                self._drop()
                continue
            if packet is None:
                return None
            if packet[0] == Op.WATCH_EVENT:
                self._queue_event(packet[3])
            else:
                LOG.debug("ignoring stray xenstore packet type %d", packet[0])

    def watch(self, path, token):
        """Watch ``path`` (and its subtree); events come from ``wait_event``."""
        key = (_path(path, watch=True), _token(token))
        try:
            self._request(Op.WATCH, path, *key)
        except XenstoreError as exc:
            if exc.code != "EEXIST":
                raise
        self._watches[key] = None

    def unwatch(self, path, token):
        """Stop watching; an unknown watch is ignored."""
        key = (_path(path, watch=True), _token(token))
        self._watches.pop(key, None)
        try:
            self._request(Op.UNWATCH, path, *key)
        except XenstoreNotFound:
            pass

    # -- nodes -----------------------------------------------------------------

    def read_bytes(self, path):
        """The raw value of ``path``; raises ``XenstoreNotFound``."""
        return self._request(Op.READ, path, _path(path))

    def read(self, path):
        """The value of ``path`` as text; raises ``XenstoreNotFound``, or
        ``XenstoreValueError`` if the value is not UTF-8."""
        raw = self.read_bytes(path)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise XenstoreValueError(f"value of {path} is not text: {raw[:64]!r}")

    def read_or(self, path, default=None):
        """The value of ``path``, or ``default`` if it does not exist."""
        try:
            return self.read(path)
        except XenstoreNotFound:
            return default

    def write(self, path, value):
        """Write printable ASCII ``value`` (may be empty) to ``path``."""
        self.write_bytes(path, _value(path, value))

    def write_bytes(self, path, data):
        """Write raw bytes, unchecked (for the dom0 simulator and tests)."""
        self._request(Op.WRITE, path, _path(path), bytes(data))

    def mkdir(self, path):
        self._request(Op.MKDIR, path, _path(path))

    def rm(self, path):
        """Remove ``path`` and its subtree; a missing node is not an error."""
        try:
            self._request(Op.RM, path, _path(path))
        except XenstoreNotFound:
            pass

    def ls(self, path):
        """The names of the children of ``path``."""
        payload = self._request(Op.DIRECTORY, path, _path(path))
        return [name.decode("ascii", "replace") for name in payload.split(NUL) if name]

    def exists(self, path):
        try:
            self.read_bytes(path)
        except XenstoreNotFound:
            return False
        return True

    def get_perms(self, path):
        """The permission list, e.g. ``["n5", "r0"]``: owner first (see xenstore.txt)."""
        payload = self._request(Op.GET_PERMS, path, _path(path))
        return [perm.decode("ascii", "replace") for perm in payload.split(NUL) if perm]

    def set_perms(self, path, perms):
        """Set the permission list: ``[wrbn]<domid>`` strings, owner first."""
        raw = [_encode("permission", perm) for perm in perms]
        try:
            check_perms(raw)
        except PyXSError:
            raise XenstoreValueError(
                f"invalid xenstore permissions {perms!r}: expected [wrbn]<domid>")
        if not raw:
            raise XenstoreValueError(f"set_perms({path}) needs at least the owner")
        self._request(Op.SET_PERMS, path, _path(path), *raw)

    def get_domain_path(self, domid):
        """The home path of domain ``domid`` (``/local/domain/<domid>``)."""
        if not isinstance(domid, int) or domid < 0:
            raise XenstoreValueError(f"domain id must be an int >= 0, not {domid!r}")
        payload = self._request(Op.GET_DOMAIN_PATH, str(domid),
                                str(domid).encode("ascii"))
        return payload.rstrip(NUL).decode("ascii", "replace")
