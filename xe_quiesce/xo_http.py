"""The HTTPS side of Xen Orchestra's sync hook: one connection, TLS, one GET answered.

Loaded by xo_hook.SyncHook at its first connection, not at the daemon's start: ssl and
http.server are about 5 MiB that an idle daemon does not need. The answers and access
rules are xo_hook's (module docstring there).
"""
import hmac  # noqa: F401  (xo_hook.AccessPolicy compares the secret with it)
import logging
import socket
from http.server import BaseHTTPRequestHandler

log = logging.getLogger("xe_quiesce.xo_hook")


def serve_connection(hook, conn, address):
    """TLS handshake, then the request; `hook` is the SyncHook (policy, sync, post_sync)."""
    tls = hook.tls_context().wrap_socket(conn, server_side=True,
                                         do_handshake_on_connect=False)
    try:
        _Handler(tls, address, hook)
    finally:
        try:
            tls.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        tls.close()


class _Handler(BaseHTTPRequestHandler):
    """`self.server` is the SyncHook."""

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

    def _allowed(self):
        return self.server.policy.allows(self.client_address[0],
                                         self.headers.get("Authorization"))

    def do_GET(self):
        if not self._allowed():
            return self._answer(403, "forbidden")
        path = self.path.split("?")[0]
        if path == "/sync":
            return self._answer(*self.server.sync())
        if path == "/post-sync":
            return self._answer(*self.server.post_sync())
        return self._answer(404, "not found")

    def _not_found(self):
        if not self._allowed():
            return self._answer(403, "forbidden")
        return self._answer(404, "not found")

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _not_found
