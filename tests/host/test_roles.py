"""The host roles (xe_quiesce.host) against a real xenstored and a scripted guest.

The guest daemon's tests cover the roles' cooperation with the real agent; these pin
the roles' own contract: XAPI's error for each bad answer (F2-F6c), snapwatchd's
writes in each mode (F7-F13), xenopsd's layout and permissions.
"""
import threading
import time
import uuid

import pytest

from testbed import domains
from tests.faulty_snapwatchd import FaultySnapwatchd
from xe_quiesce.host import xapi_role, xenopsd
from xe_quiesce.host.snapwatchd_role import SnapshotResult
from xe_quiesce.host.xapi_role import XapiError
from xe_quiesce.xenstore import XenstoreClient

DOMID = 9
VM = str(uuid.uuid4())
VDIS = [str(uuid.uuid4()), str(uuid.uuid4())]


@pytest.fixture
def dom(xenstored):
    with XenstoreClient(xenstored.uri, timeout=2.0) as client:
        vbds = [domains.Vbd(51712, VDIS[0], "disk"), domains.Vbd(51728, VDIS[1], "disk"),
                domains.Vbd(5632, None, "cdrom")]
        home, vss = domains.build_domain(client, DOMID, VM, "g", vbds)
        client.write(home + "/control/feature-quiesce", "1")
        yield client, home, vss


def guest(uri, home, answer):
    """A scripted guest: on C/action, `answer(client, C)` (None: never acknowledge)."""
    def run():
        with XenstoreClient(uri, timeout=2.0) as client:
            control = home + "/control/snapshot"
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if client.read_or(control + "/action") == "create-snapshot":
                    if answer is not None:
                        client.rm(control + "/action")
                        answer(client, control)
                    return
                time.sleep(0.01)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def call(xenstored, dom, answer, late=False, **kwargs):
    """XAPI's call against `answer`; C must be gone afterwards unless the guest writes late."""
    client, home, _ = dom
    thread = guest(xenstored.uri, home, answer)
    try:
        return xapi_role.snapshot_with_quiesce(client, home, VM, **dict(
            dict(ack_timeout=1.0, status_timeout=1.0), **kwargs))
    finally:
        thread.join(5)
        assert late or not client.exists(home + "/control/snapshot")


def writes(pairs):
    def answer(client, control):
        for key, value in pairs:
            client.write(control + "/" + key, value)
    return answer


def test_xenopsd_layout_and_permissions(dom):
    client, home, vss = dom
    assert vss == "/vss/" + VM and client.read(home + "/vss") == vss
    assert client.get_perms(vss) == ["n{}".format(DOMID)]
    assert client.get_perms(home) == ["n0", "r{}".format(DOMID)]
    assert client.get_perms(home + "/control") == ["n{}".format(DOMID)]
    backend = client.read(home + "/device/vbd/51712/backend")
    assert client.read(backend + "/sm-data/vdi-uuid") == VDIS[0]
    assert client.get_perms(backend) == ["n0", "r{}".format(DOMID)]
    assert client.read(home + "/device/vbd/5632/device-type") == "cdrom"
    cd_backend = client.read(home + "/device/vbd/5632/backend")
    assert not client.exists(cd_backend + "/sm-data/vdi-uuid")
    # the companion re-creates only what is missing, and keeps a V in use
    client.write(vss + "/status", "create-snapshots")
    assert xenopsd.ensure_vss(client, home, DOMID, VM) == vss
    assert client.read(vss + "/status") == "create-snapshots"


def test_success_reassembles_snapid_in_numeric_order(xenstored, dom):
    chunks = [("snapid/{}".format(n), "c{}.".format(n)) for n in range(12)]
    snap = str(uuid.uuid4())
    result = call(xenstored, dom, writes([("snapuuid", snap)] + chunks[::-1] +
                                         [("status", "snapshot-created")]),
                  known_vm=lambda u: u == snap)
    assert result.snapuuid == snap
    assert result.snapid == "".join(value for _, value in chunks)


@pytest.mark.parametrize("pairs, code, param", [
    ([("error", "no luck"), ("error/code", "7"), ("status", "snapshot-error")],
     xapi_role.FAILED, "no luck"),
    ([("error", "XEN_VSS_REQ_ERROR_CREATING_SNAPSHOT"), ("error/code", "5"),
      ("status", "snapshot-error")], "XEN_VSS_REQ_ERROR_CREATING_SNAPSHOT", "5"),
    ([("status", "snapshot-error")], xapi_role.INTERNAL_ERROR, "error: ENOENT"),   # F5
    ([("status", "")], xapi_role.INTERNAL_ERROR, "unexpected"),                    # F6
    ([("status", "create-snapshots")], xapi_role.INTERNAL_ERROR, "unexpected"),    # F6
    ([("snapuuid", VM), ("status", "snapshot-created")], xapi_role.INTERNAL_ERROR,
     "snapid: ENOENT"),                                                             # F6b
    ([("snapid/0", "x"), ("status", "snapshot-created")], xapi_role.FAILED, VM),   # F6c
])
def test_each_bad_answer_gets_xapis_error(xenstored, dom, pairs, code, param):
    with pytest.raises(XapiError) as caught:
        call(xenstored, dom, writes(pairs))
    assert caught.value.code == code and param in caught.value.params[-1]


def test_first_status_value_is_final(xenstored, dom):
    def answer(client, control):
        client.write(control + "/status", "snapshot-pending")
        time.sleep(0.5)  # xapi has read it by now; a later good answer is not looked at
        writes([("snapuuid", VM), ("snapid/0", "x"), ("status", "snapshot-created")])(
            client, control)
    with pytest.raises(XapiError) as caught:
        call(xenstored, dom, answer, late=True)
    assert caught.value.code == xapi_role.INTERNAL_ERROR
    assert "snapshot-pending" in caught.value.params[0]


def test_no_acknowledgement_and_no_status_time_out(xenstored, dom):
    with pytest.raises(XapiError) as caught:
        call(xenstored, dom, None, ack_timeout=0.5)                                  # F3
    assert caught.value.code == "VM_SNAPSHOT_WITH_QUIESCE_PLUGIN_DEOS_NOT_RESPOND"
    with pytest.raises(XapiError) as caught:
        call(xenstored, dom, writes([]), status_timeout=0.5)                         # F4
    assert caught.value.code == xapi_role.TIMEOUT


def test_feature_must_read_1(xenstored, dom):                                        # F2
    client, home, _ = dom
    client.write(home + "/control/feature-quiesce", "0")
    with pytest.raises(XapiError) as caught:
        xapi_role.snapshot_with_quiesce(client, home, VM)
    assert caught.value.code == xapi_role.NOT_SUPPORTED


# -- snapwatchd ------------------------------------------------------------------------

def request(client, vss, vdis):
    for vdi in vdis:
        client.write("{}/snapshot/{}".format(vss, vdi), "")
    client.write(vss + "/status", "create-snapshots")


def snapshot_ok(vdis, whole_vm):
    return SnapshotResult(str(uuid.uuid4()), {vdi: "s-" + vdi for vdi in vdis})


def serve(dom, requested, failure=None, vm_disks=VDIS, take=snapshot_ok, status="create-snapshots"):
    client, home, vss = dom
    request(client, vss, requested)
    if status != "create-snapshots":
        client.write(vss + "/status", status)
    role = FaultySnapwatchd(client, vss, home, vm_disks, take, snapshot_timeout=0.5,
                            failure=failure)
    return role.serve_once(1.0), client, vss


def test_whole_vm_mode_writes_ids_snapinfo_snapuuid_then_status(dom):
    outcome, client, vss = serve(dom, VDIS)
    assert outcome == "snapshots-created"
    assert client.read(vss + "/snaptype") == "vm"
    assert [client.read("{}/snapshot/{}/id".format(vss, v)) for v in VDIS] == [
        "s-" + v for v in VDIS]
    assert client.read(vss + "/snapinfo").startswith("<VM.snapshot><time>")
    assert client.read(vss + "/status") == "snapshots-created"


def test_count_mismatch_is_per_vdi_mode(dom):                                         # F7
    outcome, client, vss = serve(dom, VDIS[:1])
    assert outcome == "snapshots-created"
    assert client.read(vss + "/snaptype") == "vdi"
    assert client.read(vss + "/snapuuid") == "s-" + VDIS[0]       # a VDI, not a VM
    assert client.read("{}/vdisnap/{}".format(vss, VDIS[0])) == "s-" + VDIS[0]


@pytest.mark.parametrize("failure, take", [
    ("F8", snapshot_ok), (None, lambda vdis, whole: time.sleep(2)),
    (None, lambda vdis, whole: 1 / 0), ("F9", snapshot_ok), ("F10", snapshot_ok)])
def test_failures_answer_snapshots_failed(dom, failure, take):
    outcome, client, vss = serve(dom, VDIS, failure=failure, take=take)
    assert outcome.startswith("snapshots-failed")
    assert client.read(vss + "/status") == "snapshots-failed"


def test_allowvssprovider_is_overwritten_and_none_fails(dom):
    client, home, _ = dom
    client.write(home + "/vm-data/allowvssprovider", "true")
    assert serve(dom, VDIS)[0] == "snapshots-created"
    assert client.read(home + "/vm-data/allowvssprovider") == "false"
    client.write(home + "/vm-data/allowvssprovider", "None")
    assert serve(dom, VDIS)[0].startswith("snapshots-failed")


@pytest.mark.parametrize("failure", ["F11", "F13"])
def test_lock_held_or_absent_writes_nothing(dom, failure):
    outcome, client, vss = serve(dom, VDIS, failure=failure)
    assert client.read(vss + "/status") == "create-snapshots"
    assert not client.exists(vss + "/snaptype")


@pytest.mark.parametrize("failure, value", [(None, "snapshotinfo-created"),
                                            ("F12", "snapshotinfo-failed")])
def test_create_snapshotinfo(dom, failure, value):
    outcome, client, vss = serve(dom, VDIS, failure=failure, status="create-snapshotinfo")
    assert client.read(vss + "/status") == value


def test_unknown_failure_name_is_refused(dom):
    client, home, vss = dom
    with pytest.raises(ValueError):
        FaultySnapwatchd(client, vss, home, VDIS, snapshot_ok, failure="F99")
