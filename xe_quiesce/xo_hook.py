"""Xen Orchestra's HTTPS sync hook: GET /sync freezes, GET /post-sync thaws.

Who may freeze the guest is the whole question: an open port that freezes the guest for
anyone is a denial-of-service switch. Today's XO never sends the Authorization header
(its code reads the secret from a misspelled property), so `allow-from` (the XO servers'
addresses) is the control that works; `secret-file` adds a Bearer check for clients that
send it. With neither configured the listener stays off.

Answers: 200 once frozen / thawed; 500 with a short reason when quiescing failed (all
thawed again); 403 for a client that fails the checks; 404 for other paths and methods;
409 while another session is active. Nothing on the request path writes to disk, so
/post-sync is served while the guest is frozen; if it never comes, the session deadline
thaws (XO skips /post-sync whenever its snapshot call fails).
"""
import base64
import ipaddress
import logging
import os
import select
import socket
import stat
import threading

from .errors import BusyError, ConfigError, QuiesceError
from .tls import certificate_pair, check_pair

log = logging.getLogger(__name__)

TRIGGER = "xo"
LISTEN_BACKLOG = 5


def read_secret(path):
    """The shared secret; the file must be root's and unreadable by others."""
    try:
        info = os.stat(path)
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as error:
        raise ConfigError("[xo-sync-hook] secret-file {}: {}".format(path, error.strerror))
    if info.st_uid != 0 and info.st_uid != os.geteuid():
        raise ConfigError("[xo-sync-hook] secret-file {} must be owned by root".format(path))
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("[xo-sync-hook] secret-file {} must not be accessible to group or "
                          "others (chmod 600)".format(path))
    if not secret:
        raise ConfigError("[xo-sync-hook] secret-file {} is empty".format(path))
    return secret


class AccessPolicy(object):
    def __init__(self, networks, secret):
        self.networks = networks
        self.expected = None
        if secret is not None:
            self.expected = b"Bearer " + base64.b64encode(secret)

    def allows(self, address, authorization):
        client = ipaddress.ip_address(address.split("%")[0])
        if getattr(client, "ipv4_mapped", None):
            client = client.ipv4_mapped
        if self.networks and not any(client in network for network in self.networks):
            return False
        if self.expected is not None:
            import hmac  # loaded already with the HTTPS side (xo_http), which calls this

            given = (authorization or "").encode("latin-1", "replace")
            return hmac.compare_digest(given, self.expected)
        return True


def _listen(address, port, family):
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address in ("", "::"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class SyncHook(object):
    """The listener and what its two paths do through the daemon's coordinator.

    Idle, it is listening sockets and threads blocked in select(): the HTTPS side (ssl,
    http.server: about 5 MiB of the daemon's memory) loads at the first connection
    (xo_http.py) and stays. The certificate pair is checked at start all the same, in a
    child process (tls.check_pair).
    """

    def __init__(self, config, coordinator):
        self.config = config
        self.xo = config.xo
        self.coordinator = coordinator
        self.servers = []
        self.threads = []
        self._stop_pipe = None
        self.cert = self.key = self._fingerprint = None
        self.context = None
        self.policy = None
        self._context_lock = threading.Lock()

    def off_reason(self):
        if not self.xo.allow_from and not self.xo.secret_file:
            return ("the Xen Orchestra sync hook is off: set [xo-sync-hook] allow-from (the "
                    "XO servers' addresses) and/or secret-file to turn it on")
        return None

    def start(self):
        """Bind and serve; returns False (and says why once) when configured off."""
        reason = self.off_reason()
        if reason:
            log.info("%s", reason)
            return False
        secret = read_secret(self.xo.secret_file) if self.xo.secret_file else None
        self.policy = AccessPolicy(self.xo.allow_from, secret)
        self.cert, self.key = certificate_pair(self.xo)
        self._fingerprint = check_pair(self.cert, self.key)
        self._stop_pipe = os.pipe()
        for address, family in self._addresses():
            server = _listen(address, self.xo.port, family)
            self.servers.append(server)
            thread = threading.Thread(target=self._serve_until, args=(server,),
                                      name="xe-quiesce-xo", daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("Xen Orchestra sync hook listening on port %d (certificate %s)", self.xo.port,
                 self.fingerprint())
        return True

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

    def _serve_until(self, server):
        """Accept until the stop pipe is readable, blocked with no timeout (no wake-ups
        while idle); one thread per connection."""
        stop_fd = self._stop_pipe[0]
        while True:
            try:
                ready = select.select([server, stop_fd], [], [])[0]
            except InterruptedError:
                continue
            if stop_fd in ready:
                return
            try:
                conn, address = server.accept()
            except OSError:
                continue
            threading.Thread(target=self._connection, args=(conn, address),
                             daemon=True).start()

    def _connection(self, conn, address):
        try:
            from .xo_http import serve_connection  # the HTTPS side, at the first connection

            serve_connection(self, conn, address)
        except Exception:
            log.info("sync hook: connection from %s failed", address[0], exc_info=True)
        finally:
            conn.close()

    def tls_context(self):
        """The server's TLS context, made at the first connection and kept."""
        with self._context_lock:
            if self.context is None:
                from .tls import server_context

                self.context = server_context(self.cert, self.key)
            return self.context

    def stop(self):
        if self._stop_pipe is None:
            return
        os.write(self._stop_pipe[1], b"x")  # never read: every listener thread sees it
        for thread in self.threads:
            thread.join()
        for server in self.servers:
            server.close()
        for fd in self._stop_pipe:
            os.close(fd)
        self.servers, self.threads, self._stop_pipe = [], [], None

    def sync(self):
        try:
            summary = self.coordinator.freeze(TRIGGER)
        except BusyError as error:
            return 409, "busy: {}".format(error)
        except QuiesceError as error:
            return 500, "quiesce failed, nothing is frozen: {}".format(error)
        return 200, "frozen: {}".format(" ".join(summary["frozen"]) or "nothing")

    def post_sync(self):
        try:
            summary = self.coordinator.thaw(TRIGGER, may_thaw=(TRIGGER,))
        except BusyError as error:
            return 409, "busy: {}".format(error)
        if summary is None:
            return 200, "nothing was frozen"
        return 200, "{}: {}".format(summary["result"], " ".join(summary["frozen"]))
