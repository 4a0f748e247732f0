"""The sync hook's request handling: complete requests only, exact paths, one log line.

Raw TLS (and plain TCP) sockets against the real daemon, for what no HTTP client sends
on purpose: a request cut before its blank line, `//sync`, other methods, huge headers,
a connect-and-leave, a client that does not speak TLS.
"""
import socket
import ssl

import pytest

from xe_quiesce.https import (
    HEADER_LIMIT,
    BadRequest,
    IncompleteRequest,
    parse_request,
    read_request,
)
from xe_quiesce.triggers.xo import give_up_margin

WAIT = 60


def tls_socket(server, host="127.0.0.1"):
    """A TLS connection to `server.port` (the guest's listener or the dom0 relay)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, server.port), timeout=WAIT)
    return context.wrap_socket(raw, server_hostname=host)


def exchange(server, data):
    """Send raw bytes over TLS; the status code of the answer and its body."""
    with tls_socket(server) as conn:
        conn.sendall(data)
        answer = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def get(path, method="GET", extra=b""):
    return "{} {} HTTP/1.1\r\nHost: guest\r\n".format(method, path).encode() + extra + b"\r\n"


def recv_feeder(*chunks):
    chunks = list(chunks)
    return lambda _size: chunks.pop(0) if chunks else b""


def test_read_request_needs_the_blank_line_and_keeps_the_path_exact():
    request = read_request(recv_feeder(b"GET /sync?vm=1 HTTP/1.1\r\nHo", b"st: a\r\n\r\n"))
    assert (request.method, request.path, request.headers) == ("GET", "/sync", {"host": "a"})
    with pytest.raises(IncompleteRequest):
        read_request(recv_feeder(b"GET /sync HTTP/1.1\r\nHost: a\r\n"))
    assert parse_request(b"GET //sync HTTP/1.1").path == "//sync"
    with pytest.raises(BadRequest) as error:
        read_request(recv_feeder(b"GET /sync HTTP/1.1\r\nX: " + b"a" * HEADER_LIMIT))
    assert error.value.status == 431
    for bad in (b"GET /sync", b"GET /sync HTTP/1.1\r\nno colon", b"GET  /sync HTTP/1.1"):
        with pytest.raises(BadRequest) as error:
            parse_request(bad)
        assert error.value.status == 400


def test_give_up_margin_leaves_time_before_xo_timeout():
    assert give_up_margin(60) == 5.0
    assert give_up_margin(10) == 1.0
    assert give_up_margin(3) == 0.5
    assert 0 < give_up_margin(0.5) < 0.5


def test_a_request_cut_before_its_blank_line_starts_nothing(xo):
    xo.start()
    with tls_socket(xo) as conn:
        conn.sendall(b"GET /sync HTTP/1.1\r\nHost: guest\r\n")
    xo.daemon.wait_for(lambda: "left before a complete request" in xo.daemon.log(),
                       "the daemon's line for the unfinished request", WAIT)
    assert xo.frozen() == [False, False]
    assert xo.last() is None, "no session was started"
    assert exchange(xo, get("/post-sync")) == (200, "nothing was frozen\n")


def test_only_the_exact_paths_act_a_query_string_is_allowed(xo):
    xo.start()
    for path in ("//sync", "///post-sync", "/sync/", "/SYNC", "/", "/snapshot"):
        assert exchange(xo, get(path))[0] == 404, path
    assert xo.frozen() == [False, False]
    status, body = exchange(xo, get("/sync?vm=0b6e-4a1c"))
    assert status == 200 and body.startswith("frozen:")
    assert xo.frozen() == [True, True]
    assert exchange(xo, get("///post-sync"))[0] == 404
    assert xo.frozen() == [True, True], "a path that is not /post-sync thaws nothing"
    status, body = exchange(xo, get("/post-sync?vm=0b6e-4a1c"))
    assert status == 200 and body.startswith("thawed")
    assert xo.frozen() == [False, False]


def test_other_methods_405_big_headers_431_and_refused_before_acting(xo):
    xo.start()
    for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS"):
        status, _ = exchange(xo, get("/sync", method=method))
        assert status == 405, method
    assert exchange(xo, get("/sync", extra=b"X-Big: " + b"a" * HEADER_LIMIT + b"\r\n"))[0] == 431
    assert exchange(xo, b"NONSENSE\r\n\r\n")[0] == 400
    assert xo.frozen() == [False, False]
    assert xo.last() is None


def test_connect_and_leave_and_no_tls_log_one_line_no_traceback(xo):
    xo.start()
    socket.create_connection(("127.0.0.1", xo.port), timeout=WAIT).close()
    with socket.create_connection(("127.0.0.1", xo.port), timeout=WAIT) as plain:
        plain.sendall(get("/sync"))  # HTTP without TLS
        plain.recv(1024)
    with tls_socket(xo):
        pass  # TLS done, then gone without a request
    xo.daemon.wait_for(lambda: xo.daemon.log().count("sync hook: ") >= 3,
                       "one line per failed connection", WAIT)
    log = xo.daemon.log()
    assert "Traceback" not in log, log
    assert exchange(xo, get("/post-sync"))[0] == 200, "still serving"
    assert xo.frozen() == [False, False]
