"""The dom0 companion's operations: a quiesced snapshot of a guest, and its check.

On current hosts nothing plays XAPI's, snapwatchd's and xenopsd's quiesce roles any
more (contract section 0), so this does, for one VM and one request: it creates the
missing `/vss/<uuid>` and `D/vss` (xenopsd), asks the guest (xapi_role) and answers
its `create-snapshots` with XenAPI `VM.snapshot` while the guest is frozen
(snapwatchd_role). A failed conversation leaves no snapshot behind: whatever
VM.snapshot produced is destroyed, disks included, once the call has returned.

Shared by the CLI and the XAPI plugin; both pass a XenAPI `api` (session.xenapi)
and `Settings`.
"""
import contextlib
import fcntl
import logging
import os
import threading
import time

from .. import protocol
from ..xenstore import XenstoreClient, XenstoreNotFound
from . import xapi_role, xenopsd
from .snapwatchd_role import SNAPSHOT_TIMEOUT, SnapshotResult, Snapwatchd
from .xenapi_ops import (
    INVENTORY,
    XAPI_URL_ENV,
    HostError,
    annotate,
    check_runs_here,
    describe,
    destroy_snapshot,
    disks,
    find_vm,
    local_host_uuid,
    snapshot_disks,
    xenapi,
)

DOM0_XENSTORE = "unix:/var/run/xenstored/socket"
XENSTORE_ENV = "XE_QUIESCE_XENSTORE"
INVENTORY_ENV = "XE_QUIESCE_INVENTORY"
ACK_TIMEOUT_ENV = "XE_QUIESCE_ACK_TIMEOUT"
LOCK_DIR_ENV = "XE_QUIESCE_LOCK_DIR"
CRASH_CONSISTENT = "crash-consistent"
QUIESCED_TAG = "quiesced"
MANIFEST_KEY = "xe-quiesce-manifest"
FALLBACK_KEY = "xe-quiesce-fallback-reason"
# How long a VM.snapshot still running when the guest gave up may take to return
# before its result is destroyed; past this the error names the snapshot to remove.
CLEANUP_WAIT = 300.0
LOCK_DIR = "/var/lock"

LOG = logging.getLogger(__name__)


class GuestCannotQuiesce(HostError):
    """The guest did not (or could not) quiesce: --fallback crash-consistent applies."""


class Settings(object):
    """Where XAPI, xenstore, the inventory and the lock files are, and the
    acknowledgement limit (60 s, as XAPI's).

    Each one can come from the environment, so the XAPI plugin (which XAPI runs with
    no arguments of ours) is configured the same way as the command.
    """

    def __init__(self, xapi_url=None, xenstore=DOM0_XENSTORE, inventory=INVENTORY,
                 ack_timeout=xapi_role.ACK_TIMEOUT, lock_dir=LOCK_DIR):
        self.xapi_url = xapi_url or None
        self.xenstore = xenstore
        self.inventory = inventory
        self.ack_timeout = float(ack_timeout)
        self.lock_dir = lock_dir

    @classmethod
    def from_env(cls, environ=None, xapi_url=None, xenstore=None):
        environ = os.environ if environ is None else environ
        try:
            ack = float(environ.get(ACK_TIMEOUT_ENV, xapi_role.ACK_TIMEOUT))
        except ValueError:
            raise HostError("{} must be a number of seconds".format(ACK_TIMEOUT_ENV))
        return cls(xapi_url=xapi_url or environ.get(XAPI_URL_ENV),
                   xenstore=xenstore or environ.get(XENSTORE_ENV, DOM0_XENSTORE),
                   inventory=environ.get(INVENTORY_ENV, INVENTORY), ack_timeout=ack,
                   lock_dir=environ.get(LOCK_DIR_ENV, LOCK_DIR))


class Outcome(object):
    """The snapshot taken: `quiesced` False when --fallback took a plain one (`reason`)."""

    def __init__(self, uuid, quiesced, reason=""):
        self.uuid = uuid
        self.quiesced = quiesced
        self.reason = reason


def snapshot(api, settings, vm, name=None, timeout=xapi_role.STATUS_TIMEOUT, fallback=None,
             snapshot_timeout=SNAPSHOT_TIMEOUT):
    """Take a quiesced snapshot of `vm` (uuid or name-label); returns an Outcome.

    `snapshot_timeout`: what VM.snapshot may take while the guest is frozen (snapwatchd's
    fixed 10 s by default; a large VM's storage may need more, up to what the guest's own
    max-frozen leaves)."""
    if fallback not in (None, CRASH_CONSISTENT):
        raise HostError("unknown fallback {!r} (known: {})".format(fallback, CRASH_CONSISTENT))
    if not timeout > 0 or not snapshot_timeout > 0:
        raise HostError("timeouts must be positive numbers of seconds")
    ref, record = find_vm(api, vm)
    check_runs_here(api, record, local_host_uuid(settings.inventory))
    name = name or "{} (quiesced {})".format(record["name_label"],
                                             time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                                           time.gmtime()))
    with vm_lock(settings.lock_dir, record["uuid"]):
        try:
            return Outcome(quiesced_snapshot(api, settings, ref, record, name, timeout,
                                             snapshot_timeout), True)
        except GuestCannotQuiesce as error:
            if fallback != CRASH_CONSISTENT:
                raise
            return Outcome(plain_snapshot(api, ref, name, str(error)), False, str(error))


@contextlib.contextmanager
def vm_lock(lock_dir, vm_uuid):
    """One request per VM at a time (the command and the plugin may both be asked),
    as snapwatchd's per-VM lock file did."""
    fd = os.open(os.path.join(lock_dir, "xe-quiesce-host.{}.lock".format(vm_uuid)),
                 os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HostError("another quiesced snapshot of VM {} is in progress".format(vm_uuid))
        yield
    finally:
        os.close(fd)


class SnapshotTaker(object):
    """snapwatchd's take_snapshot callback, the part every taker shares: the VM's disks
    (a quiesced snapshot covers exactly those), the snapshot's uuid once there, and why
    it failed (`error`, for the admin: the guest only hears snapshots-failed)."""

    def __init__(self, vm_disks):
        self.vm_disks = sorted(vm_disks)
        self.uuid = None
        self.error = None

    def fail(self, text):
        self.error = text
        raise HostError(text)

    def check_disks(self, vdis, whole_vm):
        if not whole_vm or sorted(vdis) != self.vm_disks:
            self.fail("the guest listed the disks {} but the VM's are {}: a quiesced "
                      "snapshot covers exactly the VM's disks".format(
                          ", ".join(sorted(vdis)) or "none",
                          ", ".join(self.vm_disks) or "none"))


class Snapshotter(SnapshotTaker):
    """snapwatchd's take_snapshot on XAPI: VM.snapshot of the whole VM, remembered so
    that a failed conversation can destroy what it produced."""

    def __init__(self, api, vm_ref, name, vm_disks):
        SnapshotTaker.__init__(self, vm_disks)
        self.api = api
        self.vm_ref = vm_ref
        self.name = name
        self.taken = []
        self.idle = threading.Event()
        self.idle.set()

    def __call__(self, vdis, whole_vm):
        self.check_disks(vdis, whole_vm)
        self.idle.clear()
        try:
            ref = self.api.VM.snapshot(self.vm_ref, self.name)
            self.taken.append(ref)
            self.uuid = self.api.VM.get_uuid(ref)
            return SnapshotResult(self.uuid, snapshot_disks(self.api, ref))
        except xenapi().Failure as error:
            self.fail("VM.snapshot failed: " + describe(error))
        finally:
            self.idle.set()

    def discard(self):
        """Destroy every snapshot taken (after waiting for one in progress)."""
        problems = []
        if not self.idle.wait(CLEANUP_WAIT):
            problems.append("VM.snapshot still running after {:g} s: delete the snapshot "
                            "named {!r} when it appears".format(CLEANUP_WAIT, self.name))
        for ref in self.taken:
            problems += destroy_snapshot(self.api, ref)
        return problems


def quiesced_snapshot(api, settings, ref, record, name, timeout, snapshot_timeout):
    """The three removed roles for one request; returns the snapshot's uuid."""
    taker = Snapshotter(api, ref, name, vm_disk_uuids(api, record))
    try:
        answer = converse(settings, record, taker, timeout, snapshot_timeout)
    except ConversationFailed as error:
        raise GuestCannotQuiesce(_with_cleanup(str(error), taker.discard()))
    try:
        annotate(api, taker.taken[-1], QUIESCED_TAG, {MANIFEST_KEY: answer.snapid})
    except xenapi().Failure as error:
        raise HostError(_with_cleanup("cannot tag snapshot {}: {}".format(
            answer.snapuuid, describe(error)), taker.discard()))
    return answer.snapuuid


class ConversationFailed(GuestCannotQuiesce):
    """The guest was asked and did not deliver: the message says why, in words."""


def vm_disk_uuids(api, record):
    """The VM's non-CD VDIs: what snapwatchd compared the guest's list with (2.11)."""
    return [disk["vdi"] for disk in disks(api, record) if disk["type"] != "CD" and disk["vdi"]]


def converse(settings, record, taker, timeout, snapshot_timeout):
    """xenopsd's keys, then XAPI's request answered by snapwatchd with `taker`
    (called while the guest is frozen, `taker.uuid` the snapshot it produced).

    Returns XAPI's QuiescedSnapshot. Raises GuestCannotQuiesce before anything is
    asked of a guest that advertises no agent, ConversationFailed afterwards.
    Shared by `snapshot` (taker: VM.snapshot) and the relay (taker: waits for XO's).
    """
    vm_uuid, domid = record["uuid"], int(record["domid"])
    with XenstoreClient(settings.xenstore) as client:
        home = guest_home(client, domid, vm_uuid)
        try:
            xapi_role.check_feature(client, home, vm_uuid)
        except xapi_role.XapiError:
            raise GuestCannotQuiesce(
                "VM {} does not advertise control/feature-quiesce: no quiescing guest "
                "agent runs in it (install xe-guest-utilities-quiesce in the guest)".format(
                    vm_uuid))
        vss = xenopsd.ensure_vss(client, home, domid, vm_uuid)
        client.rm(vss + "/status")  # a leftover request must not be answered now
        stop = threading.Event()
        # snapwatchd on its own xenstore connection, as the real daemon had.
        snapwatchd = Snapwatchd(XenstoreClient(settings.xenstore), vss, home, taker.vm_disks,
                                taker, snapshot_timeout=snapshot_timeout)
        server = threading.Thread(target=_serve, name="snapwatchd", daemon=True,
                                  args=(snapwatchd, stop))
        server.start()
        try:
            return xapi_role.snapshot_with_quiesce(
                client, home, vm_uuid, ack_timeout=settings.ack_timeout,
                status_timeout=timeout, known_vm=lambda uuid: uuid == taker.uuid)
        except xapi_role.XapiError as error:
            failure = error
        finally:
            stop.set()
            server.join(5.0)
    host_error = taker.error or snapwatchd.failed_because
    raise ConversationFailed(explain(failure, settings.ack_timeout, timeout, host_error))


def guest_home(client, domid, vm_uuid):
    """The domain's home, checked to be this VM's (a stale domid must not be used)."""
    home = client.get_domain_path(domid)
    if client.read_or(home + "/vm") != "/vm/" + vm_uuid:
        raise HostError("domain {} in this host's xenstore is not VM {}".format(domid, vm_uuid))
    return home


def _serve(snapwatchd, stop):
    """snapwatchd's thread: it connects its client and answers until `stop` is set.

    If it dies, the guest thaws at its own deadline and XAPI's side reports that.
    """
    try:
        with snapwatchd.client:
            snapwatchd.serve(stop.is_set)
    except Exception:  # logged; the conversation's error is what the admin gets
        LOG.exception("snapwatchd role for %s failed", snapwatchd.vss)


def explain(error, ack_timeout, timeout, host_error):
    """XAPI's error for the conversation, as the admin needs to read it."""
    if error.code == xapi_role.DEOS_NOT_RESPOND:
        text = ("the guest did not acknowledge the request within {:g} s: its xe-quiesce "
                "agent is not running or hangs".format(ack_timeout))
    elif error.code == xapi_role.TIMEOUT:
        text = "the guest did not report a result within {:g} s".format(timeout)
    elif error.code == xapi_role.FAILED and len(error.params) > 1:
        text = "the guest could not quiesce: {}".format(error.params[1])
    elif error.code in xapi_role.VSS_REQUESTER_ERRORS:
        text = "the guest reported {} (code {})".format(error.code, error.params[-1])
    else:
        text = "the guest's answer broke the protocol: {}".format(error)
    if host_error:  # the guest was told snapshots-failed and thawed: the cause is ours
        return "{} (the guest was told, thawed and answered: {})".format(host_error, text)
    return text


def _with_cleanup(text, problems):
    if not problems:
        return text + "; no snapshot was left behind"
    return text + "; cleanup incomplete: " + "; ".join(problems)


def plain_snapshot(api, ref, name, reason):
    """--fallback crash-consistent: VM.snapshot without the guest, tagged as such."""
    snap = api.VM.snapshot(ref, name)
    try:
        annotate(api, snap, CRASH_CONSISTENT, {FALLBACK_KEY: reason})
    except xenapi().Failure as error:
        raise HostError(_with_cleanup("cannot tag snapshot: " + describe(error),
                                      destroy_snapshot(api, snap)))
    return api.VM.get_uuid(snap)


def check(api, settings, vm):
    """What a snapshot of `vm` would do: the agent's presence and the disks covered."""
    ref, record = find_vm(api, vm)
    vbds = disks(api, record)
    report = {
        "vm": {"uuid": record["uuid"], "name": record["name_label"],
               "power_state": record["power_state"]},
        "agent": {"advertised": {}, "version": None, "state": None},
        "disks": [disk for disk in vbds if disk["type"] != "CD" and disk["vdi"]],
        "skipped": [disk for disk in vbds if disk["type"] == "CD" or not disk["vdi"]],
    }
    try:
        check_runs_here(api, record, local_host_uuid(settings.inventory))
    except HostError as error:
        return _verdict(report, str(error))
    with XenstoreClient(settings.xenstore) as client:
        home = guest_home(client, int(record["domid"]), record["uuid"])
        agent = report["agent"]
        try:
            keys = client.ls(home + "/control")
        except XenstoreNotFound:
            keys = []
        for key in keys:
            if key.startswith("feature-"):
                agent["advertised"][key] = client.read_or("{}/control/{}".format(home, key))
        agent["version"] = client.read_or(home + "/" + protocol.AGENT_VERSION)
        agent["state"] = client.read_or(home + "/" + protocol.AGENT_STATE)
    advertised = agent["advertised"]
    if not protocol.advertises(lambda key: advertised.get(key.rpartition("/")[2])):
        return _verdict(report, "the guest does not advertise control/feature-quiesce")
    if not report["disks"]:
        return _verdict(report, "the VM has no disk to snapshot")
    return _verdict(report, None)


def _verdict(report, problem):
    report["quiesced_snapshot"] = {"possible": problem is None, "reason": problem or ""}
    return report
