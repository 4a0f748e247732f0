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
import hmac
import ipaddress
import logging
import os
import select
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from .errors import BusyError, ConfigError, QuiesceError
from .tls import certificate_pair, fingerprint, server_context

log = logging.getLogger(__name__)

TRIGGER = "xo"


def read_secret(path, label="[xo-sync-hook]"):
    """The shared secret; the file must be root's and unreadable by others.

    `label` names the setting in messages (the dom0 relay's is an option)."""
    try:
        info = os.stat(path)
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as error:
        raise ConfigError("{} secret-file {}: {}".format(label, path, error.strerror))
    if info.st_uid != 0 and info.st_uid != os.geteuid():
        raise ConfigError("{} secret-file {} must be owned by root".format(label, path))
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("{} secret-file {} must not be accessible to group or "
                          "others (chmod 600)".format(label, path))
    if not secret:
        raise ConfigError("{} secret-file {} is empty".format(label, path))
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
            given = (authorization or "").encode("latin-1", "replace")
            return hmac.compare_digest(given, self.expected)
        return True


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, family, hook):
        self.address_family = family
        self.hook = hook
        HTTPServer.__init__(self, address, _Handler, bind_and_activate=False)
        if family == socket.AF_INET6 and address[0] in ("", "::"):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise

    def handle_error(self, request, client_address):
        log.info("sync hook: connection from %s failed", client_address[0], exc_info=True)

    def serve_until(self, stop_fd):
        """Accept until `stop_fd` is readable. socketserver's serve_forever wakes every
        0.5 s to look for a shutdown request; this blocks until something happens."""
        while True:
            try:
                ready = select.select([self.socket, stop_fd], [], [])[0]
            except InterruptedError:
                continue
            if stop_fd in ready:
                return
            self.handle_request()

    def get_request(self):
        conn, address = self.socket.accept()
        return self.hook.context.wrap_socket(conn, server_side=True,
                                             do_handshake_on_connect=False), address


class _Handler(BaseHTTPRequestHandler):
    server_version = "xe-quiesce"
    sys_version = ""
    timeout = 30

    def setup(self):
        BaseHTTPRequestHandler.setup(self)
        self.connection.do_handshake()

    def log_message(self, fmt, *args):
        log.info("sync hook %s: " + fmt, self.client_address[0], *args)

    def _answer(self, code, text):
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        hook = self.server.hook
        if not hook.policy.allows(self.client_address[0], self.headers.get("Authorization")):
            return self._answer(403, "forbidden")
        path = self.path.split("?")[0]
        if path == "/sync":
            return self._answer(*hook.sync())
        if path == "/post-sync":
            return self._answer(*hook.post_sync())
        return self._answer(404, "not found")

    def _not_found(self):
        if not self.server.hook.policy.allows(self.client_address[0],
                                              self.headers.get("Authorization")):
            return self._answer(403, "forbidden")
        return self._answer(404, "not found")

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _not_found


class SyncHook(object):
    """The listener and what its two paths do through the daemon's coordinator."""

    def __init__(self, config, coordinator):
        self.config = config
        self.xo = config.xo
        self.coordinator = coordinator
        self.servers = []
        self.threads = []
        self._stop_pipe = None
        self.cert = None
        self.context = None
        self.policy = None

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
        self.cert, key = certificate_pair(self.xo)
        self.context = server_context(self.cert, key)
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
        return fingerprint(self.cert) if self.cert else None

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
