"""Xen Orchestra's own code (npm @xen-orchestra/xapi, tests/xo/) against the real daemon.

XO's `snapshot` / `checkpoint` / `_httpHook` run unchanged in Node with a stub XAPI; the
daemon runs as its own process on the tests' xenstored with two loop filesystems and a
real hooks directory. Timings are generous against the configured syncHookTimeout: only
the order of events is asserted, never a duration.
"""
import json

import pytest

from tests.core.test_hooks import Bed
from tests.triggers.test_xo_and_control import SECRET
from tests.xo.client import XoRun, run
from xe_quiesce.triggers.xo_tag import TAG, advice, xo_address

WAIT = 60  # seconds for anything that should happen "soon" on a loaded machine
# XO's syncHookTimeout where it must fire while a freeze hook still runs (60 s): long
# enough for the TLS handshake and the request to reach the daemon on a loaded machine.
XO_TIMEOUT_MS = 5000


@pytest.fixture
def bed(tmp_path):
    return Bed(tmp_path)


def tag_for(xo, host="127.0.0.1"):
    return "{}=https://{}:{}/?vm=guest".format(TAG, "[{}]".format(host) if ":" in host else host,
                                              xo.port)


def answered(events, path):
    return [event for event in events if event["event"] == "request-answered"
            and event["path"] == path]


def sent(events, path):
    return [event for event in events if event["event"] == "request-sent"
            and event["path"] == path]


def finished_session(xo, what):
    return xo.daemon.wait_for(lambda: xo.last(), what, timeout=WAIT)


def snapshot_checking_frozen(xo, config, frozen):
    """XO's snapshot (or checkpoint), its XAPI call held until the test has checked
    whether the guest is frozen then; XO's events once it is done."""
    call = dict(config.get("xapiCall", {}), waitStdin=True)
    client = XoRun(dict(config, xapiCall=call))
    try:
        client.wait_for("xapi-call", WAIT)
        assert xo.frozen() == [frozen, frozen], \
            "frozen={} expected while XO's snapshot call runs".format(frozen)
        client.release()
        return client.finish(WAIT)
    finally:
        client.kill()


@pytest.mark.parametrize("call", ["snapshot", "checkpoint"])
def test_normal_cycle_frozen_during_xo_snapshot_call_thawed_after_post_sync(xo, call):
    xo.start(max_frozen=WAIT)
    events = snapshot_checking_frozen(
        xo, {"call": call, "tags": [tag_for(xo)], "syncHookTimeout": WAIT * 1000}, True)
    sync, = answered(events, "/sync")
    assert sync["status"] == 200 and sync["body"].startswith("frozen:")
    post, = answered(events, "/post-sync")
    assert post["status"] == 200 and post["body"].startswith("thawed")
    assert xo.frozen() == [False, False]
    assert xo.last()["result"] == "thawed"


def test_freeze_hook_longer_than_xo_timeout_is_abandoned_and_never_freezes(xo, bed):
    bed.hook("10-db")
    bed.hook("20-slow", 'if [ "$1" = freeze ]; then sleep 60; fi\n')
    xo.start(max_frozen=90, hooks=bed.section(timeout=80))
    config = {"tags": [tag_for(xo)], "syncHookTimeout": XO_TIMEOUT_MS}
    events = snapshot_checking_frozen(xo, config, False)
    failed, = [event for event in events if event["event"] == "request-failed"]
    assert failed["path"] == "/sync" and failed["name"] == "TimeoutError", failed
    last = finished_session(xo, "the abandoned session's record")
    assert last["result"] == "abandoned", last
    assert last["message"].startswith("Xen Orchestra stopped waiting after"), last
    assert last["mounts"] == [], "nothing was frozen for the session XO left"
    assert xo.frozen() == [False, False]
    calls = bed.calls()
    assert "10-db abort" in calls and "20-slow abort" in calls, calls
    assert not [line for line in calls if line.endswith(" thaw")], calls
    assert answered(events, "/post-sync")[0]["status"] == 200
    assert "Traceback" not in xo.daemon.log()
    status = xo.cli("status").stdout
    assert "Last xo session" in status and "Xen Orchestra stopped waiting after" in status

    # The next cycle, with hooks that keep within XO's timeout, works.
    (bed.dir / "20-slow").unlink()
    events = snapshot_checking_frozen(xo, dict(config, syncHookTimeout=WAIT * 1000), True)
    assert answered(events, "/sync")[0]["status"] == 200
    assert answered(events, "/post-sync")[0]["status"] == 200
    assert xo.frozen() == [False, False]
    assert xo.last()["result"] == "thawed"


def test_sync_timeout_gives_up_before_freezing_with_503(xo, bed):
    bed.hook("10-slow", 'if [ "$1" = freeze ]; then sleep 60; fi\n')
    xo.start(max_frozen=90, sync_timeout=3, hooks=bed.section(timeout=80))
    events = run({"tags": [tag_for(xo)], "syncHookTimeout": WAIT * 1000}, WAIT * 2)
    sync, = answered(events, "/sync")
    assert sync["status"] == 503 and "sync-timeout" in sync["body"], sync
    assert xo.last()["result"] == "abandoned"
    assert "10-slow abort" in bed.calls()
    assert answered(events, "/post-sync")[0]["body"].strip() == "nothing was frozen"
    assert xo.frozen() == [False, False]


def test_xo_snapshot_call_failing_sends_no_post_sync_and_the_deadline_thaws(xo):
    xo.start(max_frozen=15)
    events = snapshot_checking_frozen(xo, {"tags": [tag_for(xo)], "syncHookTimeout": WAIT * 1000,
                                           "xapiCall": {"fail": "SR_BACKEND_FAILURE"}}, True)
    assert events[-1]["ok"] is False and events[-1]["error"] == "SR_BACKEND_FAILURE"
    assert sent(events, "/post-sync") == [], "XO sends no /post-sync after a failed snapshot"
    xo.daemon.wait_for(lambda: xo.frozen() == [False, False], "the deadline thaw", WAIT)
    xo.daemon.wait_for(lambda: (xo.last() or {}).get("result"), "the session's end", WAIT)


def test_xo_sends_no_authorization_whatever_its_sync_hook_secret(xo):
    """With syncHookSecret set in XO, no header arrives: a guest that requires the
    secret refuses real XO (403) and XO snapshots crash-consistent."""
    xo.start(allow_from="", secret=True)
    events = run({"tags": [tag_for(xo)], "syncHookSecret": SECRET.decode(),
                  "syncHookTimeout": WAIT * 1000}, WAIT)
    assert sent(events, "/sync")[0]["headers"] == {}
    assert answered(events, "/sync")[0]["status"] == 403
    assert [event for event in events if event["event"] == "xapi-call"], "snapshot went ahead"
    assert xo.frozen() == [False, False]


def test_post_sync_during_quiescing_cancels_and_answers_200(xo, bed):
    """A /post-sync from the same client while its /sync still runs the hooks (XO after
    its timeout, when the connection watch has not seen the close yet) cancels."""
    bed.hook("10-slow", 'if [ "$1" = freeze ]; then sleep 60; fi\n')
    xo.start(max_frozen=90, hooks=bed.section(timeout=80))
    sync = XoRun({"call": "httpHook", "pathname": "/sync", "tags": [tag_for(xo)],
                  "syncHookTimeout": WAIT * 2000})
    try:
        xo.daemon.wait_for(lambda: "10-slow freeze" in bed.calls(), "the slow hook", WAIT)
        post = run({"call": "httpHook", "pathname": "/post-sync", "tags": [tag_for(xo)],
                    "syncHookTimeout": WAIT * 1000}, WAIT)
        answer, = answered(post, "/post-sync")
        assert answer["status"] == 200 and answer["body"].startswith("abandoned"), answer
        events = sync.finish(WAIT)
    finally:
        sync.kill()
    assert answered(events, "/sync")[0]["status"] == 503
    assert xo.last()["result"] == "abandoned"
    assert "10-slow abort" in bed.calls()
    assert xo.frozen() == [False, False]
    again = run({"call": "httpHook", "pathname": "/post-sync", "tags": [tag_for(xo)]}, WAIT)
    assert answered(again, "/post-sync")[0]["status"] == 200, "idempotent"


# XO's address selection over the shapes of `networks` the guest tools produce. Only
# loopback addresses, and offline: the URL XO's code builds is recorded, not requested
# (another test's listener may be on port 1727 of this machine).
NETWORKS = [
    ({"0/ip": "127.0.0.2"}, "127.0.0.2"),
    ({"0/ip": "127.0.0.2", "0/ipv4/0": "127.0.0.2", "0/ipv6/0": "::1"}, "127.0.0.2"),
    ({"0/ipv6/0": "::1", "1/ipv4/0": "127.0.0.3"}, "127.0.0.3"),
    ({"0/ipv4/10": "127.0.0.10", "0/ipv4/2": "127.0.0.4"}, "127.0.0.10"),
    ({"1/ipv6/0": "::1"}, "::1"),
    ({"0/ipv6/1": "fe80::1", "0/ipv6/0": "::1"}, "::1"),
    ({}, None),
    ({"0/mac": "aa:bb:cc:dd:ee:ff"}, None),
]


@pytest.mark.parametrize("networks, address", NETWORKS)
def test_xo_address_selection_matches_ours_and_the_advised_tag(networks, address):
    assert xo_address(networks) == address
    events = run({"tags": [TAG], "networks": networks, "offline": True}, WAIT)
    tag, why = advice(networks, 1727)
    if address is None:
        assert events[-1]["error"] == "no VM address found", events
        assert not [event for event in events if event["event"] == "xapi-call"], \
            "no address: XO takes no snapshot at all"
        assert "no snapshot at all" in why
    elif ":" in address:
        url = sent(events, "/sync")[0]["url"]
        assert url == "https://localhost:1727/sync", "XO drops a bare IPv6 address"
        assert tag == "{}=https://[{}]:1727".format(TAG, address), why
        with_url = run({"tags": [tag], "networks": networks, "offline": True}, WAIT)
        assert sent(with_url, "/sync")[0]["url"] == "https://[{}]:1727/sync".format(address)
    else:
        assert sent(events, "/sync")[0]["url"] == "https://{}:1727/sync".format(address)
        assert tag == TAG, why


def test_ipv6_only_guest_works_with_the_advised_tag_and_status_prints_it(xo):
    xo.start(max_frozen=WAIT)
    home = xo.sim.home
    xo.sim.client.write(home + "/attr/vif/0/ipv6/0", "::1")
    status = xo.status()["daemon"]["xo_sync_hook"]
    assert status["tag"] == "{}=https://[::1]:{}".format(TAG, xo.port), status
    assert "only IPv6" in status["tag_why"]
    text = xo.cli("status").stdout
    assert "Xen Orchestra tag for this VM: {}".format(status["tag"]) in text
    events = snapshot_checking_frozen(xo, {"tags": [status["tag"]], "networks": {"0/ipv6/0": "::1"},
                                           "syncHookTimeout": WAIT * 1000}, True)
    assert answered(events, "/post-sync")[0]["status"] == 200
    assert xo.frozen() == [False, False]


def test_status_tag_for_an_ipv4_guest_and_for_no_address(xo):
    xo.start()
    status = xo.status()["daemon"]["xo_sync_hook"]
    assert "no address" in status["tag_why"], status
    xo.sim.client.write(xo.sim.home + "/attr/vif/0/ipv4/0", "127.0.0.1")
    status = xo.status()["daemon"]["xo_sync_hook"]
    # Not the plain tag: the test's listener is not on XO's port 1727.
    assert status["tag"] == "{}=https://127.0.0.1:{}".format(TAG, xo.port), status
    assert json.dumps(status)  # the JSON output carries it as well


def test_advice_plain_tag_only_for_an_ipv4_address_on_port_1727():
    assert advice({"0/ipv4/0": "192.0.2.5"}, 1727) == (
        TAG, "XO picks 192.0.2.5 (the first IPv4 address the guest tools report)")
    assert advice({"0/ipv4/0": "192.0.2.5"}, 1727, "192.0.2.9")[0] == \
        TAG + "=https://192.0.2.9:1727"
    assert advice({"0/ipv6/0": "2001:db8::5"}, 1727)[0] == TAG + "=https://[2001:db8::5]:1727"
    tag, why = advice({}, 1727, fallback_addresses=["127.0.0.1", "fe80::1%eth0",
                                                    "2001:db8::7", "192.0.2.8"])
    assert tag == TAG + "=https://192.0.2.8:1727" and "no snapshot at all" in why
