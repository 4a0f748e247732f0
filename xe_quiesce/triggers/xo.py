"""Xen Orchestra's HTTPS sync hook: GET /sync freezes, GET /post-sync thaws.

Who may freeze the guest is the whole question: an open port that freezes the guest for
anyone is a denial-of-service switch. Today's XO never sends the Authorization header
(its code reads the secret from a misspelled property), so `allow-from` (the XO servers'
addresses) is the control that works; `secret-file` adds a Bearer check for clients that
send it. With neither configured the listener stays off.

Never frozen for an XO that stopped waiting: XO aborts /sync at its syncHookTimeout and
snapshots anyway, so while the hooks run and the filesystems freeze the /sync connection
is watched; when the client hangs up, or sends /post-sync meanwhile, or sync-timeout
(less a margin) passes, the session is abandoned (cancel.py): hooks aborted, nothing
left frozen.

Answers: 200 once frozen / thawed (and to a /post-sync that abandons its client's
quiescing /sync); 500 with a short reason when quiescing failed and 503 when it gave up
(all thawed again); 403 for a client that fails the checks; 404 for any path but exactly
/sync and /post-sync (a query string is ignored); 405 for methods other than GET; 400
and 431 for malformed or oversized requests; 409 while another session is active.
Nothing acts before the request is complete. Nothing on the request path writes to
disk, so /post-sync is served while the guest is frozen; if it never comes, the session
deadline thaws (XO skips /post-sync whenever its snapshot call fails).

Idle, the hook is listening sockets and threads blocked in select(): ssl and hmac
(OpenSSL's libssl and libcrypto, 3-4 MiB of the daemon's memory) load at the first
connection, its TLS context is made then and kept. The certificate pair is checked at
start all the same, in a child process (tls.check_pair).
"""
import ipaddress
import logging
import os
import select
import socket
import threading

from ..access import AccessPolicy, read_secret
from ..core.cancel import AbandonedError, Cancel
from ..errors import BusyError, ConfigError, QuiesceError
from ..https import HANGUP, Handler, Server, hung_up
from ..protocol import XO
from ..tls import certificate_pair, check_pair
from .xo_tag import advice_for_this_vm

log = logging.getLogger(__name__)

TRIGGER = XO


class _Handler(Handler):
    """XO's two paths. The connection is closed after the answer, so XO's keep-alive
    client opens a new one for /post-sync."""

    def get(self, request):
        hook = self.server.owner
        if request.path == "/sync":
            return hook.sync(self.client_address[0], self.request)
        if request.path == "/post-sync":
            return hook.post_sync(self.client_address[0])
        return 404, "not found"

    def undelivered(self, request, code):
        if request.path == "/sync" and code == 200:
            self.server.owner.client_gone_after_freeze(self.client_address[0])


class _Server(Server):
    """The sync hook's server. A client that fails before its request is a DEBUG line
    (the Server default): the guest's journal is not a port scanner's record."""

    handler = _Handler
    log = log
    label = "sync hook"


class ConnectionWatch(object):
    """Sets `cancel` when the client of a /sync hangs up while the session quiesces.

    XO aborts the request at its syncHookTimeout by closing the connection; a reset or
    a proxy ends it the same way. A client that sent its request waits for the answer
    without sending more, so a hang-up (POLLRDHUP, POLLHUP, POLLERR) is the only event
    watched: pipelined bytes would not end the watch. Its thread lives only while a
    session quiesces.
    """

    def __init__(self, conn, cancel, address):
        self.fd = conn.fileno()
        self.cancel = cancel
        self.address = address
        self._stop = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="xe-quiesce-xo-watch",
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        os.write(self._stop[1], b"x")
        self._thread.join()
        for fd in self._stop:
            os.close(fd)

    def _watch(self):
        poller = select.poll()
        poller.register(self.fd, HANGUP)
        poller.register(self._stop[0], select.POLLIN)
        while True:
            try:
                events = dict(poller.poll())
            except InterruptedError:
                continue
            if self._stop[0] in events:
                return
            if events.get(self.fd, 0) & HANGUP:
                if self.cancel.set(client_gone_reason(self.cancel.elapsed())):
                    log.warning("sync hook: %s closed the /sync connection after %.1f s: the "
                                "session is abandoned", self.address, self.cancel.elapsed())
                return


GONE = "Xen Orchestra stopped waiting"


def client_gone_reason(seconds):
    return "{} after {:.1f} s".format(GONE, seconds)


class XoListener(object):
    """The listener and what its two paths do through the daemon's session slot.

    `home()` gives the (xenstore URI, domain path) where the guest tools report this
    VM's addresses, for the tag that `status` advises (the path is None until the XAPI
    trigger has found it).
    """

    def __init__(self, config, slot, home):
        self.config = config
        self.xo = config.xo
        self.slot = slot
        self.home = home
        self.servers = []
        self.threads = []
        self._stop_pipe = None
        self.cert = self.key = self._fingerprint = None
        self.context = None
        self._context_lock = threading.Lock()
        self.policy = None
        self._lock = threading.Lock()
        self._syncing = {}  # client address -> the Cancel of its /sync in progress
        self._failed = None  # why start() could not listen

    def off_reason(self):
        if self._failed:
            return self._failed
        if not self.xo.allow_from and not self.xo.secret_file:
            return ("the Xen Orchestra sync hook is off: set [xo-sync-hook] allow-from (the "
                    "XO servers' addresses) and/or secret-file to turn it on")
        return None

    def start(self):
        """Bind and serve, unless configured off (said once). A hook that cannot start is
        logged and its status says why: the other triggers serve without it."""
        reason = self.off_reason()
        if reason:
            log.info("%s", reason)
            return
        try:
            self._listen()
        except (QuiesceError, OSError) as error:
            self._failed = self._why_not(error)
            log.error("Xen Orchestra sync hook not started: %s", self._failed)

    def _listen(self):
        secret = read_secret(self.xo.secret_file) if self.xo.secret_file else None
        self.policy = AccessPolicy(self.xo.allow_from, secret)
        self.cert, self.key = certificate_pair(self.xo)
        self._fingerprint = check_pair(self.cert, self.key)
        self._stop_pipe = os.pipe()
        for address, family in self._addresses():
            server = _Server((address, self.xo.port), family, self)
            self.servers.append(server)
            thread = threading.Thread(target=server.serve_until, args=(self._stop_pipe[0],),
                                      name="xe-quiesce-xo", daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("Xen Orchestra sync hook listening on port %d (certificate %s)", self.xo.port,
                 self.fingerprint())

    def _why_not(self, error):
        if isinstance(error, ConfigError):
            return str(self.config.located(error))
        if isinstance(error, OSError):  # the port is taken
            return "cannot listen on port {}: {}".format(self.xo.port, error.strerror or error)
        return str(error)

    def _addresses(self):
        if self.xo.address:
            try:
                version = ipaddress.ip_address(self.xo.address).version
            except ValueError:
                raise ConfigError("[xo-sync-hook] address {!r} is not an IP address".format(
                    self.xo.address))
            return [(self.xo.address, socket.AF_INET6 if version == 6 else socket.AF_INET)]
        if socket.has_ipv6 and os.path.exists("/proc/net/if_inet6"):
            return [("::", socket.AF_INET6)]  # dual stack: IPv4 arrives as ::ffff:a.b.c.d
        return [("0.0.0.0", socket.AF_INET)]

    def fingerprint(self):
        return self._fingerprint

    def status(self):
        """(fields, lines) of `xe-quiesce status`: on or why off; when on, the tag XO
        needs to reach the hook from this VM's addresses."""
        on = bool(self.servers)
        part = {"on": on, "port": self.xo.port if on else None,
                "fingerprint": self.fingerprint() if on else None,
                "off_reason": self.off_reason()}
        if not on:
            return {"xo_sync_hook": part}, [
                "Xen Orchestra sync hook: off ({})".format(part["off_reason"])]
        tag, why = advice_for_this_vm(*self.home(), port=self.xo.port,
                                      listen_address=self.xo.address)
        part.update(tag=tag, tag_why=why)
        return {"xo_sync_hook": part}, [
            "Xen Orchestra sync hook: on, port {}, certificate {}".format(
                part["port"], part["fingerprint"]),
            "Xen Orchestra tag for this VM: {}".format(tag), "  ({})".format(why)]

    def tls_context(self):
        """The server's TLS context, made at the first connection and kept."""
        with self._context_lock:
            if self.context is None:
                from ..tls import server_context

                self.context = server_context(self.cert, self.key)
            return self.context

    def stop(self):
        if self._stop_pipe is None:
            return
        os.write(self._stop_pipe[1], b"x")  # never read: every listener thread sees it
        for thread in self.threads:
            thread.join()
        for server in self.servers:
            server.server_close()
        for fd in self._stop_pipe:
            os.close(fd)
        self.servers, self.threads, self._stop_pipe = [], [], None

    def sync(self, address, conn):
        """Quiesce for the client at `address` on `conn`; the answer, or None when the
        client is gone (nothing is left frozen for it)."""
        cancel = Cancel()
        with self._lock:
            if address in self._syncing:
                return 409, "busy: a xo session is starting"
            self._syncing[address] = cancel
        timeout = self.xo.sync_timeout
        timer = cancel.after(timeout - give_up_margin(timeout), (
            "not quiesced within [xo-sync-hook] sync-timeout ({:g} s, less a {:g} s margin)"
            .format(timeout, give_up_margin(timeout))))
        try:
            with ConnectionWatch(conn, cancel, address):
                summary = self.slot.freeze(TRIGGER, cancel=cancel)
        except BusyError as error:
            return 409, "busy: {}".format(error)
        except AbandonedError as error:
            if cancel.reason().startswith(GONE):
                return None
            return 503, "gave up, nothing is frozen: {}".format(error)
        except QuiesceError as error:
            return 500, "quiesce failed, nothing is frozen: {}".format(error)
        finally:
            timer.cancel()
            with self._lock:
                del self._syncing[address]
                late = cancel.reason()
        if not late and hung_up(conn):  # left after the watch ended: it will not snapshot
            late = client_gone_reason(cancel.elapsed())
        if late:  # asked between the session's last cancel point and now
            self._thaw_for(address, late)
            return None if late.startswith(GONE) else (503, late)
        return 200, "frozen: {}".format(" ".join(summary["frozen"]) or "nothing")

    def client_gone_after_freeze(self, address):
        """The 200 to /sync could not be written: XO is not going to snapshot this."""
        self._thaw_for(address, "Xen Orchestra was gone when /sync was answered")

    def _thaw_for(self, address, reason):
        try:
            summary = self.slot.thaw(TRIGGER)
        except BusyError:
            return
        if summary is not None:
            log.warning("sync hook: %s: %s; thawed (%s)", address, reason, summary["result"])

    def post_sync(self, address):
        with self._lock:
            cancel = self._syncing.get(address)
            if cancel is not None and self.slot.quiescing_under(cancel):
                cancel.set("Xen Orchestra sent /post-sync while /sync was still quiescing")
                return 200, "abandoned: {}".format(cancel.reason())
        try:
            summary = self.slot.thaw(TRIGGER)
        except BusyError as error:
            return 409, "busy: {}".format(error)
        if summary is None:
            return 200, "nothing was frozen"
        return 200, "{}: {}".format(summary["result"], " ".join(summary["frozen"]))


def give_up_margin(sync_timeout):
    """How long before XO's timeout an unfinished /sync gives up: time for the answer to
    reach XO and for XO's own timer to drift; a tenth, between 0.5 and 5 s."""
    return min(5.0, max(0.5, sync_timeout / 10.0), sync_timeout / 2.0)
