"""The dom0 relay driven by Xen Orchestra's own client code (tests/xo: XO's published
`vm.mjs` snapshot() in Node, with a stub XAPI whose VM.snapshot call waits for the test).

While XO's VM.snapshot call runs, the test takes the snapshot on the test XAPI, as the
real call would, probing the guest's filesystems; then XO's code goes on and sends its
detached /post-sync. The relay, the guest daemon, xenstored: as in test_relay.py.
"""
import pytest

from testbed.waiting import wait_until
from tests.host.test_companion import xenapi_plugin_dir  # noqa: F401 (fixture)
from tests.host.test_relay import (  # noqa: F401 (the host fixture)
    ALLOW_LOCAL,
    freeze_hook,
    other_host_relay,
    quiesced,
    relay_host_fixture,
)
from tests.xo.client import XoRun, installed

pytestmark = pytest.mark.skipif(not installed(), reason="XO's client: run `make xo-client`")


def xo_snapshot(host, relay_port, address="127.0.0.1", fail=None, sync_timeout=60000):
    """XO's snapshot() of the VM tagged for the relay at address:relay_port."""
    call = {"fail": fail} if fail else {"waitStdin": True}
    return XoRun({"uuid": host.vm_uuid, "syncHookTimeout": sync_timeout, "xapiCall": call,
                  "tags": ["xo:notify-on-snapshot=https://{}:{}/?vm={}".format(
                      address, relay_port, host.vm_uuid)]})


def take_while_xo_waits(host, xo):
    """XO is in VM.snapshot: take it on XAPI (the probe sees the guest), let XO go on."""
    xo.wait_for("xapi-call", 120)
    host.xo_snapshot()
    xo.release()
    return xo.finish(120)


def answers(events, path):
    return [(event["status"], event["body"].strip()) for event in events
            if event["event"] == "request-answered" and event["path"] == path]


def test_xo_snapshot_through_the_relay_is_quiesced(host):
    host.make_vm().start_guest()
    relay = host.relay(*ALLOW_LOCAL)
    xo = xo_snapshot(host, relay.port)
    try:
        events = take_while_xo_waits(host, xo)
    finally:
        xo.kill()
    sent = xo.first("request-sent", path="/sync")
    assert sent["url"] == "https://127.0.0.1:{}/sync?vm={}".format(relay.port, host.vm_uuid)
    assert answers(events, "/sync") == [(200, "frozen: VM " + host.vm_uuid)]
    assert host.probes == [[True, True]]  # frozen while XO's snapshot was taken
    [snap] = quiesced(host)
    assert answers(events, "/post-sync") == [(200, "quiesced snapshot " + snap["uuid"])]
    assert host.frozen_now() == [False, False]
    assert "xe-quiesce-manifest" in snap["other_config"]
    assert xo.first("done")["ok"] is True
    host.idle()


def test_xo_gets_the_guests_reason_and_snapshots_anyway(host, tmp_path):
    host.make_vm().start_guest(extra=freeze_hook(tmp_path, "10-db", "exit 4"))
    relay = host.relay(*ALLOW_LOCAL)
    xo = xo_snapshot(host, relay.port)
    try:
        events = take_while_xo_waits(host, xo)  # XO goes on crash-consistent
    finally:
        xo.kill()
    [(status, body)] = answers(events, "/sync")
    assert status == 500 and "10-db" in body and "exit status 4" in body, body
    assert host.probes == [[False, False]]
    assert answers(events, "/post-sync") == [(412, "nothing is frozen for VM " + host.vm_uuid)]
    assert quiesced(host) == []
    host.idle()


def test_xo_snapshot_failing_sends_no_post_sync_and_the_hold_thaws(host):
    host.make_vm().start_guest()
    relay = host.relay("--hold", "2", *ALLOW_LOCAL)
    xo = xo_snapshot(host, relay.port, fail="SR_BACKEND_FAILURE_44")
    try:
        events = xo.finish(120)
    finally:
        xo.kill()
    assert answers(events, "/sync") == [(200, "frozen: VM " + host.vm_uuid)]
    assert xo.first("request-sent", path="/post-sync") is None  # XO sends none
    assert xo.first("done")["ok"] is False
    host.wait(lambda: host.frozen_now() == [False, False], "the thaw at the hold limit")
    host.idle()
    wait_until(lambda: "no /post-sync within 2 s" in relay.log(), 15, "the relay's reason")
    assert host.snapshot_records() == ([], [])


def test_xo_outside_allow_from_is_refused_and_snapshots_crash_consistent(host):
    host.make_vm().start_guest()
    relay = host.relay("--allow-from", "192.0.2.10")
    xo = xo_snapshot(host, relay.port)
    try:
        events = take_while_xo_waits(host, xo)
    finally:
        xo.kill()
    assert answers(events, "/sync") == [(403, "forbidden")]
    assert answers(events, "/post-sync") == [(403, "forbidden")]
    assert host.probes == [[False, False]]
    assert quiesced(host) == []


def test_xo_follows_the_redirect_to_the_vms_host(host):
    """The tag names one pool host; the VM runs on the other: XO's fetch follows the
    307 to the relay there, for /sync and for /post-sync."""
    host.make_vm().start_guest()
    host.xapi.db["VM"][host.vm]["resident_on"] = host.xapi.other_host
    first = host.relay(*ALLOW_LOCAL)
    other_host_relay(host, first, *ALLOW_LOCAL)
    xo = xo_snapshot(host, first.port)
    try:
        events = take_while_xo_waits(host, xo)
    finally:
        xo.kill()
    assert answers(events, "/sync") == [(200, "frozen: VM " + host.vm_uuid)]
    assert host.probes == [[True, True]]
    [snap] = quiesced(host)
    assert answers(events, "/post-sync") == [(200, "quiesced snapshot " + snap["uuid"])]
    for path in ("/sync", "/post-sync"):
        assert '"GET {}?vm={} HTTP/1.1" 307'.format(path, host.vm_uuid) in first.log()
    assert host.frozen_now() == [False, False]


def test_xo_giving_up_on_sync_is_never_left_frozen(host, tmp_path):
    """XO aborts /sync at its syncHookTimeout while the guest's freeze hook still runs,
    and snapshots crash-consistent: the relay sees the hang-up, and the guest, once its
    hook is done and it freezes, is told snapshots-failed at once and thaws."""
    host.make_vm().start_guest(extra=freeze_hook(tmp_path, "10-slow", "sleep 4"))
    relay = host.relay(*ALLOW_LOCAL)
    xo = xo_snapshot(host, relay.port, sync_timeout=1500)
    try:
        events = take_while_xo_waits(host, xo)
    finally:
        xo.kill()
    failed = xo.first("request-failed", path="/sync")
    assert failed is not None and failed["name"] == "TimeoutError", events
    assert host.probes == [[False, False]]  # XO's snapshot: not frozen
    wait_until(lambda: "the guest froze after /sync was given up (XO stopped waiting)"
               in relay.log(), 60, "the guest told at its freeze")
    host.wait(lambda: host.frozen_now() == [False, False], "thawed")
    host.idle()
    assert quiesced(host) == []
