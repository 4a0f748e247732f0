"""The HTTPS server of the guest's sync hook and of the dom0 relay: complete requests only.

Both serve Xen Orchestra's GET /sync, which freezes a guest: acting on a request that is
not the one the client sent freezes it for nobody. http.server's handler is lax there (a
request cut before its blank line is served, `//sync` is taken for `/sync`, a failed TLS
handshake prints a traceback), so the request head is read and checked here, and every
failure is one log line. One request per connection, closed after the answer.

ssl is not imported here: the guest loads it only at its first connection, through its
owner's tls_context().
"""
import collections
import logging
import select
import socket
import socketserver
import sys

from .errors import QuiesceError

REQUEST_TIMEOUT = 30.0  # TLS handshake and the whole request: a slow client is dropped
HEADER_LIMIT = 8192  # request line and headers; XO's are about 250 bytes
HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR
REASONS = {200: "OK", 202: "Accepted", 307: "Temporary Redirect", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           412: "Precondition Failed", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


class IncompleteRequest(Exception):
    """The client left (or stalled) before the blank line that ends the headers."""


class BadRequest(Exception):
    def __init__(self, status, text):
        Exception.__init__(self, text)
        self.status = status


Request = collections.namedtuple("Request", "method target path version headers")


def read_request(recv, limit=HEADER_LIMIT):
    """Read one complete request head with `recv(n)`; a Request, or raise.

    Only the request line and headers are read (a GET has no body); end-of-file before
    the blank line is IncompleteRequest, never a request.
    """
    data = b""
    while True:
        end = _head_end(data)
        if end is not None:
            return parse_request(data[:end])
        if len(data) > limit:
            raise BadRequest(431, "request headers over {} bytes".format(limit))
        chunk = recv(4096)
        if not chunk:
            raise IncompleteRequest("end of file after {} bytes".format(len(data)))
        data += chunk


def _head_end(data):
    ends = [index for index in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if index >= 0]
    return min(ends) if ends else None


def parse_request(head, limit=HEADER_LIMIT):
    """The request line and headers of `head` (bytes, without the blank line).

    The path is the target as sent, up to any query string (a tag's URL may carry
    one): `//sync` is not `/sync`.
    """
    if len(head) > limit:
        raise BadRequest(431, "request headers over {} bytes".format(limit))
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1]:
        raise BadRequest(400, "not an HTTP/1 request line")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, "malformed header line")
        headers[name.lower()] = value.strip()
    method, target, version = parts
    return Request(method, target, target.split("?", 1)[0], version, headers)


def hung_up(conn):
    """True once the client of `conn` hung up (XO's AbortSignal closes the connection)."""
    poller = select.poll()
    poller.register(conn.fileno(), HANGUP)
    return bool(poller.poll(0))


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A thread per connection on one address; "::" takes IPv4 too (dual stack).

    The TLS handshake is the connection's thread's, under its timeout, so a client that
    stalls in it holds no one else up. `owner` gives `policy` (an access.AccessPolicy,
    read at each request) and `tls_context()`. A subclass names its `handler` (a
    Handler), the `log` and `label` of its lines, its `software` (the Server header),
    and at which level a client that failed before its request is logged.
    """

    daemon_threads = True
    allow_reuse_address = True
    handler = None
    log = logging.getLogger(__name__)
    label = "https"
    software = "xe-quiesce"
    failure_level = logging.DEBUG

    def __init__(self, address, family, owner):
        self.address_family = family
        self.owner = owner
        socketserver.TCPServer.__init__(self, address, self.handler, bind_and_activate=False)
        if family == socket.AF_INET6 and address[0] in ("", "::"):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise

    def handle_error(self, request, client_address):
        # Expected failures are handled in Handler; this is the one line for the rest.
        self.log.warning("%s: request from %s failed: %s", self.label, client_address[0],
                         sys.exc_info()[1])

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
        try:
            context = self.owner.tls_context()
        except QuiesceError as error:  # the pair checked at start went bad since
            conn.close()
            self.log.error("%s: %s", self.label, error)
            raise OSError(str(error))  # socketserver drops this connection, serves the next
        return context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), \
            address


class Handler(socketserver.BaseRequestHandler):
    """One connection, one request: TLS, the complete request, the checks, the answer.

    Nothing acts before the blank line that ends the headers has arrived (a client that
    leaves earlier, as a half request, starts nothing); a client outside the owner's
    policy is 403 and any method but GET 405 before get() is asked.
    """

    def handle(self):
        conn = self.request
        server = self.server
        address = self.client_address[0]
        conn.settimeout(REQUEST_TIMEOUT)
        try:
            conn.do_handshake()
            request = read_request(conn.recv)
        except IncompleteRequest as error:
            server.log.log(server.failure_level, "%s: %s left before a complete request (%s)",
                           server.label, address, error)
            return
        except BadRequest as error:
            self.answer(error.status, str(error))
            return
        except OSError as error:  # ssl.SSLError and socket.timeout are OSErrors
            server.log.log(server.failure_level,
                           "%s: connection from %s failed before a request: %s",
                           server.label, address, error)
            return
        if not server.owner.policy.allows(address, request.headers.get("authorization")):
            answer = (403, "forbidden")
        elif request.method != "GET":
            answer = (405, "only GET is served")
        else:
            answer = self.get(request)
        server.log.info('%s %s: "%s %s %s" %s', server.label, address, request.method,
                        request.target[:80], request.version,
                        answer[0] if answer else "client gone")
        if answer is not None and not self.answer(*answer):
            self.undelivered(request, answer[0])

    def get(self, request):
        """The answer to an allowed GET: (code, text[, headers]), or None when the
        client is gone."""
        raise NotImplementedError

    def undelivered(self, request, code):
        """The answer `code` to `request` could not be written: the client is gone."""

    def answer(self, code, text, headers=()):
        """Send the answer; False (one line in the log) when the client is gone."""
        body = (text + "\n").encode()
        head = ["HTTP/1.1 {} {}".format(code, REASONS.get(code, "")),
                "Server: " + self.server.software, "Content-Type: text/plain",
                "Content-Length: {}".format(len(body)), "Connection: close"]
        if code == 405:
            head.append("Allow: GET")
        head.extend("{}: {}".format(name, value) for name, value in headers)
        try:
            self.request.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        except OSError as error:  # ssl.SSLError included
            self.server.log.info("%s: %s was gone when its %d answer was written (%s)",
                                 self.server.label, self.client_address[0], code, error)
            return False
        return True
