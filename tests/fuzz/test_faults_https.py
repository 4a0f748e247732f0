"""Abusive clients of the Xen Orchestra HTTPS listener: idle connections, garbage
instead of TLS, plain HTTP, huge headers. None of them freezes anything, and XO's real
requests are still served while they hang around.

(The listener's request parsing is being hardened on another branch; a case that fails
here because of xo_hook.py is marked xfail(strict=True) until that lands.)
"""
import random
import socket
import ssl

import pytest

from testbed.waiting import wait_until
from tests.fuzz import figures

IDLE = 40


def tls_client():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(xo, wrap=True):
    sock = socket.create_connection(("127.0.0.1", xo.port), timeout=20)
    return tls_client().wrap_socket(sock) if wrap else sock


def answer_of(sock):
    """The status line the listener sent back, or "" if it just closed."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (OSError, ssl.SSLError):
        pass
    return data.split(b"\r\n")[0].decode("latin-1")


def assert_serves_xo(xo):
    assert xo.get("/sync", timeout=20)[0] == 200
    assert xo.frozen() == [True, True]
    assert xo.get("/post-sync", timeout=20)[0] == 200
    assert xo.frozen() == [False, False]


def test_idle_connections_do_not_stop_xo_being_served(xo):
    xo.start()
    idle = [connect(xo, wrap=False) for _ in range(IDLE // 2)]     # no TLS at all
    idle += [connect(xo) for _ in range(IDLE // 2)]                # TLS, no request
    try:
        assert_serves_xo(xo)
        assert xo.sim.snapshot_with_quiesce().snapuuid  # the xenstore trigger too
    finally:
        for sock in idle:
            sock.close()
    assert xo.frozen() == [False, False]
    figures.count("abusive HTTPS clients: idle connections held while XO was served", IDLE)


def test_garbage_instead_of_tls_freezes_nothing(xo):
    xo.start()
    chance = random.Random(figures.SEED)
    payloads = [b"GET /sync HTTP/1.1\r\nHost: x\r\n\r\n",                  # plain HTTP
                b"\x16\x03\x01\xff\xff" + b"\x00" * 64,                     # a bogus record
                bytes(chance.randrange(256) for _ in range(4096))]
    for payload in payloads:
        with connect(xo, wrap=False) as sock:
            try:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            answer_of(sock)
        assert xo.frozen() == [False, False]
    assert_serves_xo(xo)
    figures.count("abusive HTTPS clients: garbage TLS streams", len(payloads))


@pytest.mark.parametrize("request_bytes", [
    b"GET /sync HTTP/1.1\r\nX-Long: " + b"a" * (1 << 20) + b"\r\n\r\n",
    b"GET /sync HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n",
    b"GET /" + b"s" * (1 << 20) + b" HTTP/1.1\r\n\r\n",
], ids=["1 MiB header", "5000 headers", "1 MiB path"])
def test_huge_requests_are_refused_and_freeze_nothing(xo, request_bytes):
    xo.start()
    with connect(xo) as sock:
        try:
            sock.sendall(request_bytes)
        except (OSError, ssl.SSLError):
            pass  # the listener may close as soon as it has seen enough
        status = answer_of(sock)
    assert status == "" or status.split(" ")[1].startswith("4"), status
    assert xo.frozen() == [False, False]
    assert_serves_xo(xo)
    figures.count("abusive HTTPS clients: huge requests refused")


def test_abusers_leave_no_traceback_in_the_log(xo):
    xo.start()
    with connect(xo, wrap=False) as sock:
        sock.sendall(b"\x16\x03\x01\xff\xff" + b"\x00" * 64)
        answer_of(sock)
    with connect(xo, wrap=False) as sock:
        sock.sendall(b"GET /sync HTTP/1.1\r\n\r\n")
        answer_of(sock)
    assert_serves_xo(xo)
    wait_until(lambda: "sync hook" in xo.daemon.log(), 5, "the listener's log")
    assert "Traceback" not in xo.daemon.log()
