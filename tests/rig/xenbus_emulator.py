"""A fake /dev/xen/xenbus: a raw pty that speaks the Linux device's byte stream.

The client opens ``emulator.path`` (a symlink to a pty slave) exactly as it opens
the real device; the emulator reads its requests from the pty master and forwards
them to a real xenstored's unix socket, behaving like Linux's
``xenbus_dev_frontend`` (docs/packaging.md, "The xenbus device"):

- WATCH/UNWATCH are not forwarded as such: the emulator registers its own watch
  under its own token, answers the client with a reply it makes up, and maps events
  back to the client's token;
- other requests go upstream under the emulator's own req_id; the client's req_id
  is restored in the reply;
- a watch event's header carries req_id 0 and tx_id 0;
- closing the device (the client closes the pty) ends the session: its watches go,
  and the path is pointed at a fresh pty so a re-open starts clean, like a new file.

Quirks, each switchable per instance, reproduce what breaks naive clients:

- ``zero_watch_ids``: made-up WATCH/UNWATCH replies carry req_id 0 and tx_id 0
  (old kernels);
- ``foreign_req_ids``: every reply carries the emulator's own req_id (Linux 4.11
  until "xenbus: track caller request id"); events then carry junk req_ids too;
- ``events_first``: a reply is held back for ``hold`` seconds and any watch event
  arriving meanwhile overtakes it (the initial WATCH event always does);
- ``home``: relative paths are resolved against this domain home and relative
  watches get relative event paths, so a client sees a guest-like view (no guest
  permissions: upstream is still a dom0 connection).

One rule of the device is checked, not reproduced: a request written before the last
one's reply was read is counted in ``overlapped``. The real device sends the last
request's body from the open file's one message buffer, which the next write()
overwrites (xenbus_dev_request_and_reply: ``vec->iov_base = msg + 1``): seen under real
Xen as mangled requests, a reply never given and a WATCH hung in the kernel.

``drop()`` hangs up the client (its reads see EOF, its writes EIO), as a xenstored
restart or a suspend/resume would; the upstream connection closing does the same.
"""
import os
import select
import socket
import struct
import termios
import threading
import time
import tty

HEADER = struct.Struct("IIII")
WATCH, UNWATCH, WATCH_EVENT, ERROR = 4, 5, 15, 16
# Requests whose first NUL-terminated argument is a node path.
PATH_OPS = {1, 2, 3, 11, 12, 13, 14, 22}
JUNK_REQ_ID = 0xDEADBEEF
_POLL = 0.01


def _frames(buf):
    """Pop whole ``(op, rq_id, tx_id, payload)`` messages off a bytearray."""
    while len(buf) >= HEADER.size:
        op, rq_id, tx_id, size = HEADER.unpack_from(buf)
        if len(buf) < HEADER.size + size:
            return
        payload = bytes(buf[HEADER.size:HEADER.size + size])
        del buf[:HEADER.size + size]
        yield op, rq_id, tx_id, payload


def _pack(op, rq_id, tx_id, payload):
    return HEADER.pack(op, rq_id, tx_id, len(payload)) + payload


class _Session:
    """One open of the device: a pty, an upstream connection, watches, pending ids."""

    def __init__(self, link):
        self.master, slave = os.openpty()
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[0] &= ~(termios.INLCR | termios.IGNCR | termios.IXOFF)
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        tmp = link + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, link)
        os.close(slave)  # the master now reports POLLHUP until the client opens it
        self.attached = False
        self.inbuf = bytearray()
        self.upbuf = bytearray()
        self.upstream = None
        self.to_upstream = []        # packed requests waiting for the upstream connection
        self.pending = {}            # our req_id -> (client rq_id, tx_id, op, made_up)
        self.watches = {}            # our token -> (client path, client token, upstream path)
        self.held = []               # (release time, packed reply) under events_first

    def close(self):
        os.close(self.master)
        if self.upstream is not None:
            self.upstream.close()


class XenbusEmulator:
    """Background thread serving ``path``; see the module docstring for the quirks."""

    def __init__(self, upstream_path, workdir, zero_watch_ids=False, foreign_req_ids=False,
                 events_first=False, hold=0.02, home=None):
        self.upstream_path = upstream_path
        self.path = os.path.join(workdir, "xenbus")
        self.zero_watch_ids = zero_watch_ids
        self.foreign_req_ids = foreign_req_ids
        self.events_first = events_first
        self.hold = hold
        self.home = home.rstrip("/").encode() if home else None
        #: Sessions a client opened so far; a reconnect makes it grow.
        self.sessions_opened = 0
        #: Headers ``(op, rq_id, tx_id)`` of everything sent to the client, in order.
        self.sent = []
        #: Requests the client wrote while an earlier one was still unanswered.
        self.overlapped = 0
        self._next_rq_id = 0x10000
        self._next_token = 0
        self._drop_requested = threading.Event()
        self._dropped = threading.Event()
        self._stop = threading.Event()
        self._session = None
        self._thread = None

    def start(self):
        self._session = _Session(self.path)
        self._thread = threading.Thread(target=self._run, name="xenbus-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._session is not None:
            self._session.close()
            self._session = None

    def drop(self):
        """Hang up the client now; the path then leads to a fresh device."""
        self._dropped.clear()
        self._drop_requested.set()
        if not self._dropped.wait(5):
            raise RuntimeError("xenbus emulator did not drop the session")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the loop ---------------------------------------------------------------

    def _run(self):
        while not self._stop.is_set():
            if self._drop_requested.is_set():
                self._drop_requested.clear()
                self._new_session()
                self._dropped.set()
            session = self._session
            self._connect_upstream(session)
            self._release_held(session)
            if not self._poll(session):
                self._new_session()

    def _new_session(self):
        self._session.close()
        self._session = _Session(self.path)

    def _poll(self, session):
        """Serve one round of I/O; False when the session ended."""
        poller = select.poll()
        poller.register(session.master, select.POLLIN)
        if session.upstream is not None:
            poller.register(session.upstream, select.POLLIN)
        for fd, mask in poller.poll(_POLL * 1000):
            if fd == session.master:
                if mask & select.POLLIN:
                    if not session.attached:
                        session.attached = True
                        self.sessions_opened += 1
                    try:
                        data = os.read(session.master, 65536)
                    except OSError:
                        data = b""
                    session.inbuf += data
                    for packet in _frames(session.inbuf):
                        self._from_client(session, *packet)
                elif mask & select.POLLHUP:
                    if session.attached:  # the client closed the device
                        return False
                    time.sleep(_POLL)     # nobody opened it yet
            else:
                data = session.upstream.recv(65536)
                if not data:              # xenstored went away: hang up the client too
                    return False
                session.upbuf += data
                for packet in _frames(session.upbuf):
                    self._from_upstream(session, *packet)
        return True

    def _connect_upstream(self, session):
        if session.upstream is None and session.to_upstream:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.upstream_path)
            except OSError:
                sock.close()
                return                     # retried next round, as the kernel waits
            session.upstream = sock
        if session.upstream is not None:
            for data in session.to_upstream:
                session.upstream.sendall(data)
            session.to_upstream = []

    # -- client -> xenstored ------------------------------------------------------

    def _rq_id(self):
        self._next_rq_id += 1
        return self._next_rq_id

    def _abs(self, path):
        if self.home and not path.startswith((b"/", b"@")):
            return self.home + b"/" + path
        return path

    def _from_client(self, session, op, rq_id, tx_id, payload):
        if session.pending or session.held:
            self.overlapped += 1
        if op in (WATCH, UNWATCH):
            self._watch_op(session, op, rq_id, tx_id, payload)
            return
        if op in PATH_OPS:
            path, sep, rest = payload.partition(b"\0")
            payload = self._abs(path) + sep + rest
        ours = self._rq_id()
        session.pending[ours] = (rq_id, tx_id, op, False)
        session.to_upstream.append(_pack(op, ours, tx_id, payload))

    def _watch_op(self, session, op, rq_id, tx_id, payload):
        parts = payload.split(b"\0")
        path, token = parts[0], parts[1] if len(parts) > 1 else b""
        if op == WATCH:
            self._next_token += 1
            ours = b"emu%d" % self._next_token
            session.watches[ours] = (path, token, self._abs(path))
        else:
            ours = next((t for t, w in session.watches.items() if w[:2] == (path, token)), None)
            if ours is None:
                self._reply(session, (rq_id, tx_id, op, True), ERROR, b"ENOENT\0")
                return
            del session.watches[ours]
        mine = self._rq_id()
        session.pending[mine] = (rq_id, tx_id, op, True)
        session.to_upstream.append(_pack(op, mine, 0, self._abs(path) + b"\0" + ours + b"\0"))

    # -- xenstored -> client ------------------------------------------------------

    def _from_upstream(self, session, op, rq_id, tx_id, payload):
        if op == WATCH_EVENT:
            path, token = payload.split(b"\0")[:2]
            watch = session.watches.get(token)
            if watch is None:
                return                       # a watch the client already removed
            if self.home and not watch[0].startswith((b"/", b"@")):
                path = path[len(self.home) + 1:]
            junk = JUNK_REQ_ID if self.foreign_req_ids else 0
            self._send(session, WATCH_EVENT, junk, 0, path + b"\0" + watch[1] + b"\0")
            return
        request = session.pending.pop(rq_id, None)
        if request is not None:
            self._reply(session, request, op, payload, ours=rq_id)

    def _reply(self, session, request, op, payload, ours=None):
        client_rq, client_tx, req_op, made_up = request
        if made_up and self.zero_watch_ids:
            rq_id, tx_id = 0, 0
        elif self.foreign_req_ids:
            rq_id, tx_id = ours if ours is not None else self._rq_id(), client_tx
        else:
            rq_id, tx_id = client_rq, client_tx
        if made_up and op != ERROR:
            op, payload = req_op, b"OK\0"
        if self.events_first:
            session.held.append((time.monotonic() + self.hold, op, rq_id, tx_id, payload))
        else:
            self._send(session, op, rq_id, tx_id, payload)

    def _release_held(self, session):
        now = time.monotonic()
        while session.held and session.held[0][0] <= now:
            self._send(session, *session.held.pop(0)[1:])

    def _send(self, session, op, rq_id, tx_id, payload):
        self.sent.append((op, rq_id, tx_id))
        try:
            os.write(session.master, _pack(op, rq_id, tx_id, payload))
        except OSError:
            pass                             # the client is gone; the session ends
