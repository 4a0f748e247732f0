"""The dom0 relay (`xe-quiesce-host relay`) end to end, with a Python HTTPS client.

Real parts: the relay as its own process (the command systemd runs), the test rig's
xenstored, the guest daemon `xe-quiesce run` on loop filesystems with its XO listener
off, the real XenAPI client (the relay's, and this test's taking the snapshot as XO
does between /sync and /post-sync). XAPI is the test's (tests/xapi_server.py).
"""
import http.client
import json
import os
import re
import socket
import ssl
import sys
import uuid

import pytest
import XenAPI

from testbed.guestd import GuestDaemon
from testbed.waiting import wait_until
from tests.host.test_companion import Host, xenapi_plugin_dir  # noqa: F401 (fixture)
from tests.triggers.test_xo_requests import exchange, get, tls_socket
from tests.xapi_server import NULL
from xe_quiesce.https import HEADER_LIMIT

LISTENING = re.compile(r"listening on port (\d+)")


class RelayProcess(GuestDaemon):
    """`xe-quiesce-host relay ...` for one host (its inventory), on 127.0.0.x; run,
    logged and stopped (SIGTERM, as systemd does) as the guest daemon is."""

    def __init__(self, host, log_path, args, address="127.0.0.1", port=0, inventory=None):
        environ = host.env()
        if inventory:
            environ["XE_QUIESCE_INVENTORY"] = inventory
        GuestDaemon.__init__(self, None, [], log_path, environ)
        self.argv = [sys.executable, "-m", "xe_quiesce.host.cli", "relay", "--address",
                     address, "--port", str(port), "--tls-dir",
                     str(host.tmp_path / "tls")] + list(args)
        self.address = address
        self.port = None
        self.start()

    def started(self):
        def listening():
            found = LISTENING.search(self.log())
            return found and int(found.group(1))
        self.port = self.wait_for(listening, "the relay to listen", 30)
        return self

    def get(self, path, vm, headers=None, timeout=90):
        return https_get(self.address, self.port, "{}?vm={}".format(path, vm), headers,
                         timeout)


def https_get(address, port, target, headers=None, timeout=90, method="GET"):
    """(status, body, headers): no certificate check, as XO's client; no redirects."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(address, port, timeout=timeout, context=context)
    try:
        connection.request(method, target, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode().strip(), dict(response.getheaders())
    finally:
        connection.close()


class RelayHost(Host):
    def start_guest(self, max_frozen=10, extra=""):
        config = self.write_config(self.mounts, max_frozen=max_frozen,
                                   extra="[xenstore]\nrequest-timeout = 2\n" + extra)
        args = ["--xenstore", self.xenstored.uri, "--domain-path", self.home]
        self.guestd = GuestDaemon(config, args, str(self.tmp_path / "daemon.log")).start()
        self.wait(lambda: self.read("data/xe-quiesce/state") == "idle", "the guest daemon")
        return self

    def relay(self, *args, **kwargs):
        made = RelayProcess(self, str(self.tmp_path / "relay-{}.log".format(
            len(self.relays))), args, **kwargs)
        self.relays.append(made)
        return made.started()

    def xo_snapshot(self, name="XO backup"):
        """What XO does between /sync's answer and /post-sync: VM.snapshot on XAPI."""
        session = XenAPI.Session(self.xapi.url)
        session.xenapi.login_with_password("root", "", "1.0", "xo-stand-in")
        try:
            return session.xenapi.VM.snapshot(self.vm, name)
        finally:
            session.xenapi.session.logout()

    def idle(self):
        self.wait(lambda: self.read("data/xe-quiesce/state") == "idle", "idle")

    def stop(self):
        try:
            for made in self.relays:
                made.stop()
        finally:
            Host.stop(self)


@pytest.fixture(name="host")
def relay_host_fixture(xenstored, loopfs, write_config, tmp_path,
                       xenapi_plugin_dir):  # noqa: F811
    made = RelayHost(xenstored, loopfs, write_config, tmp_path, xenapi_plugin_dir)
    made.relays = []
    yield made
    made.stop()


ALLOW_LOCAL = ("--allow-from", "127.0.0.0/8")


def freeze_hook(tmp_path, name, at_freeze):
    """The guest config's [hooks] section for one hook running `at_freeze` at freeze."""
    hooks = tmp_path / "hooks.d"
    hooks.mkdir(mode=0o755)
    hook = hooks / name
    hook.write_text('#!/bin/sh\n[ "$1" = freeze ] && {}\nexit 0\n'.format(at_freeze))
    hook.chmod(0o755)
    return "[hooks]\ndir = {}\n".format(hooks)


def quiesced(host):
    return [snap for snap in host.snapshot_records()[0] if "quiesced" in snap["tags"]]


# -- success -----------------------------------------------------------------------------

def test_sync_freezes_post_sync_thaws_and_tags_xos_snapshot(host):
    host.make_vm().start_guest()
    relay = host.relay(*ALLOW_LOCAL)
    status, body, _ = relay.get("/sync", host.vm_uuid)
    assert status == 200, body
    assert host.frozen_now() == [True, True]  # the 200 comes once the guest is frozen
    assert host.read("data/xe-quiesce/state") == "frozen"
    host.xo_snapshot()
    assert host.probes == [[True, True]]      # XO's VM.snapshot saw it frozen
    status, body, _ = relay.get("/post-sync", host.vm_uuid)
    [snap] = host.snapshot_records()[0]
    assert (status, body) == (200, "quiesced snapshot {}".format(snap["uuid"]))
    assert host.frozen_now() == [False, False]
    assert snap["tags"] == ["quiesced"]
    manifest = json.loads(snap["other_config"]["xe-quiesce-manifest"])
    assert sorted(manifest["frozen"]) == sorted(host.mounts)
    assert sorted(manifest["vdis"].values()) == sorted(host.vdis)
    assert not host.client.exists(host.control)
    host.idle()
    # the next backup: a new session, the newest snapshot is the one given to the guest
    assert relay.get("/sync", host.vm_uuid)[0] == 200
    second = host.xapi.db["VM"][host.xo_snapshot("XO backup 2")]["uuid"]
    assert relay.get("/post-sync", host.vm_uuid)[:2] == (200, "quiesced snapshot " + second)
    assert len(quiesced(host)) == 2


# -- the guest cannot quiesce -----------------------------------------------------------------

def test_guest_that_cannot_quiesce_is_500_with_its_reason(host, tmp_path):
    host.make_vm().start_guest(extra=freeze_hook(
        tmp_path, "10-db", '{ echo "database lock refused" >&2; exit 3; }'))
    relay = host.relay(*ALLOW_LOCAL)
    status, body, _ = relay.get("/sync", host.vm_uuid)
    assert status == 500
    assert body.startswith("quiesce failed, nothing is frozen: the guest could not quiesce:")
    assert "10-db" in body and "exit status 3" in body, body
    assert host.frozen_now() == [False, False]
    assert relay.get("/post-sync", host.vm_uuid)[0] == 412  # nothing held any more
    assert host.snapshot_records() == ([], [])
    host.idle()


def test_no_post_sync_within_the_hold_thaws_the_guest(host):
    """XO's snapshot failed, so no /post-sync: the hold limit tells the guest
    snapshots-failed, it thaws, and a late /post-sync finds nothing frozen."""
    host.make_vm().start_guest()
    relay = host.relay("--hold", "2", *ALLOW_LOCAL)
    assert relay.get("/sync", host.vm_uuid)[0] == 200
    assert host.frozen_now() == [True, True]
    host.wait(lambda: host.frozen_now() == [False, False], "the thaw at the hold limit")
    host.idle()
    wait_until(lambda: "the guest was told, thawed and answered" in relay.log(), 15,
               "the session's end")
    assert "no /post-sync within 2 s of /sync's answer" in relay.log()
    status, body, _ = relay.get("/post-sync", host.vm_uuid)
    assert (status, body) == (412, "nothing is frozen for VM {}".format(host.vm_uuid))
    assert quiesced(host) == []
    # and the VM can be quiesced again at once
    assert relay.get("/sync", host.vm_uuid)[0] == 200
    host.xo_snapshot()
    assert relay.get("/post-sync", host.vm_uuid)[0] == 200
    assert len(quiesced(host)) == 1


# -- who may call -----------------------------------------------------------------------------

def test_client_outside_allow_from_is_403_and_nothing_is_frozen(host):
    host.make_vm().start_guest()
    relay = host.relay("--allow-from", "192.0.2.10")
    for path in ("/sync", "/post-sync", "/elsewhere"):
        assert relay.get(path, host.vm_uuid)[:2] == (403, "forbidden")
    assert host.frozen_now() == [False, False]
    assert "VM.get_by_uuid" not in host.xapi.calls


def test_bearer_secret_is_checked(host, tmp_path):
    secret = tmp_path / "relay-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    host.make_vm().start_guest()
    relay = host.relay("--secret-file", str(secret))
    assert relay.get("/sync", host.vm_uuid)[0] == 403
    wrong = {"Authorization": "Bearer d3Jvbmc="}
    assert relay.get("/sync", host.vm_uuid, wrong)[0] == 403
    assert host.frozen_now() == [False, False]
    right = {"Authorization": "Bearer czNjcmV0"}  # base64("s3cret"), as XO would send it
    assert relay.get("/sync", host.vm_uuid, right)[0] == 200
    host.xo_snapshot()
    assert relay.get("/post-sync", host.vm_uuid, right)[0] == 200


def test_relay_refuses_to_listen_open_to_anyone(host):
    made = RelayProcess(host, str(host.tmp_path / "open.log"), [])
    assert made.process.wait(60) == 1
    assert made.log().strip() == ("xe-quiesce-host: error: the relay stays off: give "
                                  "--allow-from (the XO servers' addresses) and/or "
                                  "--secret-file")


# -- refusals: nothing is asked of the guest ------------------------------------------------

def test_bad_requests_get_a_clear_4xx(host):
    xapi = host.xapi
    host.make_vm()
    halted = xapi.db["VM"][xapi.add_vm("halted", power_state="Halted", resident_on=NULL)]
    relay = host.relay(*ALLOW_LOCAL)
    cases = {"not-a-uuid": (400, "give exactly one vm=<VM uuid>"),
             "": (400, "give exactly one vm=<VM uuid>"),
             str(uuid.uuid4()): (404, "no VM has the uuid"),
             halted["uuid"]: (412, "is Halted, not Running"),
             host.vm_uuid: (412, "does not advertise control/feature-quiesce")}
    for vm, (code, text) in cases.items():
        status, body, _ = relay.get("/sync", vm)
        assert status == code and text in body, (vm, status, body)
    status, body, _ = https_get("127.0.0.1", relay.port, "/sync?vm={}&vm={}".format(
        host.vm_uuid, host.vm_uuid))
    assert status == 400
    assert relay.get("/post-sync", host.vm_uuid)[:2] == (
        412, "nothing is frozen for VM {}".format(host.vm_uuid))
    status, _, headers = https_get("127.0.0.1", relay.port, "/sync?vm=" + host.vm_uuid,
                                   method="POST")
    assert (status, headers["Allow"]) == (405, "GET")
    assert https_get("127.0.0.1", relay.port, "/sync")[0] == 400
    assert https_get("127.0.0.1", relay.port, "/other?vm=" + host.vm_uuid)[0] == 404
    assert "VM.snapshot" not in xapi.calls
    assert not host.client.exists(host.control)  # the agentless guest was never asked


def asked_nothing(host):
    """Nothing was asked of XAPI or the guest: no session started."""
    return "VM.get_by_uuid" not in host.xapi.calls and not host.client.exists(host.control) \
        and host.frozen_now() == [False, False]


def test_malformed_requests_are_refused_as_by_the_guest_and_start_nothing(host):
    """The relay reads requests as the guest's sync hook does (xe_quiesce/https.py):
    http.server took `//sync` for /sync, served a request cut before its blank line and
    let headers of any size through."""
    host.make_vm().start_guest()
    relay = host.relay(*ALLOW_LOCAL)
    target = "/sync?vm=" + host.vm_uuid
    for path in ("/" + target, "/sync/?vm=" + host.vm_uuid, "/SYNC?vm=" + host.vm_uuid):
        assert exchange(relay, get(path)) == (404, "not found\n"), path
    big = b"X-Big: " + b"a" * HEADER_LIMIT + b"\r\n"
    status, body = exchange(relay, get(target, extra=big))
    assert (status, body) == (431, "request headers over {} bytes\n".format(HEADER_LIMIT))
    assert exchange(relay, get(target, method="FROB"))[0] == 405
    with tls_socket(relay) as conn:
        conn.sendall(get(target)[:-2])  # no blank line, then gone
    wait_until(lambda: "relay: 127.0.0.1 left before a complete request" in relay.log(), 30,
               "the relay's line for the unfinished request")
    assert asked_nothing(host)
    assert "Traceback" not in relay.log()
    assert relay.get("/sync", host.vm_uuid)[0] == 200  # and it still serves
    host.xo_snapshot()
    assert relay.get("/post-sync", host.vm_uuid)[0] == 200


def test_a_plain_http_client_is_one_log_line_and_no_traceback(host):
    host.make_vm().start_guest()
    relay = host.relay(*ALLOW_LOCAL)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as plain:
        plain.sendall(get("/sync?vm=" + host.vm_uuid))  # HTTP without TLS
        plain.recv(1024)
    failed = "relay: connection from 127.0.0.1 failed before a request"
    wait_until(lambda: failed in relay.log(), 30, "the relay's line for the failed handshake")
    assert asked_nothing(host)
    assert relay.get("/post-sync", host.vm_uuid)[:2] == (
        412, "nothing is frozen for VM {}".format(host.vm_uuid))  # still serving
    log = relay.log()
    assert log.count(failed) == 1, log
    assert "Traceback" not in log, log
    assert host.frozen_now() == [False, False]


def test_second_sync_for_a_held_vm_is_409(host):
    host.make_vm().start_guest()
    relay = host.relay(*ALLOW_LOCAL)
    assert relay.get("/sync", host.vm_uuid)[0] == 200
    status, body, _ = relay.get("/sync", host.vm_uuid)
    assert status == 409 and "already held" in body, body
    assert host.frozen_now() == [True, True]  # the first session is untouched
    host.xo_snapshot()
    assert relay.get("/post-sync", host.vm_uuid)[0] == 200
    assert len(quiesced(host)) == 1


# -- a pool: the VM runs on another host ----------------------------------------------------------

def other_host_relay(host, first, *args):
    """The other host's relay: its own inventory, on 127.0.0.2 with the pool's port."""
    inventory = str(host.tmp_path / "other-inventory")
    with open(inventory, "w") as handle:
        handle.write("INSTALLATION_UUID='{}'\n".format(
            host.xapi.db["host"][host.xapi.other_host]["uuid"]))
    return host.relay(*args, address="127.0.0.2", port=first.port, inventory=inventory)


def test_vm_on_another_host_is_redirected_to_its_relay(host):
    host.make_vm().start_guest()
    host.xapi.db["VM"][host.vm]["resident_on"] = host.xapi.other_host
    first = host.relay(*ALLOW_LOCAL)
    second = other_host_relay(host, first, *ALLOW_LOCAL)
    status, body, headers = first.get("/sync", host.vm_uuid)
    location = "https://127.0.0.2:{}/sync?vm={}".format(first.port, host.vm_uuid)
    assert (status, headers["Location"]) == (307, location), body
    assert host.frozen_now() == [False, False]
    assert second.get("/sync", host.vm_uuid)[0] == 200
    assert host.frozen_now() == [True, True]
    host.xo_snapshot()
    status, _, headers = first.get("/post-sync", host.vm_uuid)
    assert (status, headers["Location"]) == (307, location.replace("/sync", "/post-sync"))
    assert second.get("/post-sync", host.vm_uuid)[0] == 200
    assert host.frozen_now() == [False, False]
    assert len(quiesced(host)) == 1


def test_relay_stopped_while_the_guest_is_held_thaws_it(host):
    host.make_vm().start_guest(max_frozen=30)
    relay = host.relay(*ALLOW_LOCAL)
    assert relay.get("/sync", host.vm_uuid)[0] == 200
    assert relay.stop() == 0
    assert host.frozen_now() == [False, False]  # told before the relay exited
    assert "the relay stopped" in relay.log()
    host.idle()
    assert os.path.exists(str(host.tmp_path / "tls" / "cert.pem"))
