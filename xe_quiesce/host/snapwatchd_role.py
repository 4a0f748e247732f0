"""snapwatchd's half of the contract: answer `V/status` = `create-snapshots` (2.7-2.17).

The snapshot itself is a callback, `take_snapshot(vdis, whole_vm)` returning a
`SnapshotResult`: the dom0 companion passes one that calls XenAPI `VM.snapshot`, the
tests one that copies loop images. Everything else is the removed snapwatchd's
behaviour, with its status values, its disk-count rule and its 10 s budget.

Each step is a method so that the tests can inject the failure modes of contract
section b (F7-F13) by overriding one (tests/faulty_snapwatchd.py).
"""
import logging
import threading
import time

from .. import protocol
from ..xenstore import XenstoreNotFound
from .waiting import wait_for

LOG = logging.getLogger(__name__)

SNAPSHOT_TIMEOUT = 10.0   # snapwatchd gives VM.snapshot 10 s (F8)

CREATED = protocol.SNAPSHOTS_CREATED
FAILED = protocol.SNAPSHOTS_FAILED


class SnapshotResult(object):
    """`snapuuid`: the snapshot VM (whole-VM mode); `vdis`: source VDI -> snapshot VDI."""

    def __init__(self, snapuuid, vdis):
        self.snapuuid = snapuuid
        self.vdis = dict(vdis)


class SnapshotFailed(Exception):
    """take_snapshot could not snapshot; snapwatchd answers snapshots-failed."""


class Snapwatchd(object):
    """snapwatchd for one VM: `vss` is V, `vm_disks` the VM's non-CD VDIs (xapi's DB)."""

    def __init__(self, client, vss, domain_path, vm_disks, take_snapshot,
                 snapshot_timeout=SNAPSHOT_TIMEOUT):
        self.client = client
        self.vss = vss
        self.vm_uuid = vss.rsplit("/", 1)[-1]
        self.domain_path = domain_path
        self.allow_key = domain_path + "/vm-data/allowvssprovider"
        self.vm_disks = list(vm_disks)
        self.take_snapshot = take_snapshot
        self.snapshot_timeout = snapshot_timeout
        self.outcomes = []
        self.failed_because = None  # why the last request was answered snapshots-failed

    def serve_once(self, timeout, stop=None):
        """Wait up to `timeout` s for one request and answer it; returns the outcome."""
        status = wait_for(self.client, self.vss + "/status",
                          lambda v: v in (protocol.CREATE_SNAPSHOTS, protocol.CREATE_SNAPSHOTINFO),
                          timeout, stop)
        if status == protocol.CREATE_SNAPSHOTS:
            outcome = self.create_snapshots()
        elif status == protocol.CREATE_SNAPSHOTINFO:
            outcome = self.create_snapshotinfo()
        else:
            return None
        self.outcomes.append(outcome)
        return outcome

    def serve(self, stop):
        """Answer requests until `stop()` is true (the simulator's thread)."""
        while not stop():
            self.serve_once(0.5, stop)

    def _status(self, value, why=""):
        if why:
            LOG.warning("snapwatchd for %s: %s", self.vm_uuid, why)
        if value == FAILED:
            self.failed_because = why
        self.client.write(self.vss + "/status", value)
        return value if not why else "{}: {}".format(value, why)

    def create_snapshots(self):
        value = self.allowvssprovider()
        if value == "None":
            return self._status(FAILED, "vm-data/allowvssprovider is None")
        if value is not None:
            self.client.write(self.allow_key, "false")
        self.client.rm(self.vss + "/snapstring")
        try:
            requested = self.client.ls(self.vss + "/snapshot")
        except XenstoreNotFound:
            requested = []
        whole_vm = self.whole_vm(requested)
        self.client.write(self.vss + "/snaptype", "vm" if whole_vm else "vdi")
        if not whole_vm:
            foreign = [vdi for vdi in requested if vdi not in self.vm_disks]
            if foreign:
                return self._status(FAILED, "VDIs not of this VM: " + ", ".join(foreign))
        try:
            result = self.snapshot(requested, whole_vm)
        except SnapshotFailed as error:
            return self._status(FAILED, str(error))
        missing = [vdi for vdi in requested if vdi not in result.vdis]
        if missing:
            return self._status(FAILED, "no snapshot of VDI " + ", ".join(missing))
        for vdi in requested:
            if not whole_vm:
                self.client.write("{}/vdisnap/{}".format(self.vss, vdi), result.vdis[vdi])
            self.client.write("{}/snapshot/{}/id".format(self.vss, vdi), result.vdis[vdi])
        snapuuid = result.snapuuid if whole_vm else result.vdis[requested[-1]]
        if whole_vm:
            self.client.write(self.vss + "/snapinfo",
                              snapinfo(time.time(), snapuuid, self.vm_uuid))
        self.client.write(self.vss + "/snapuuid", snapuuid)
        return self._status(CREATED)

    def allowvssprovider(self):
        """`D/vm-data/allowvssprovider` (sm's vss_control plugin): `None` refuses (2.8)."""
        return self.client.read_or(self.allow_key)

    def whole_vm(self, requested):
        """Whole-VM mode: a count, not a set comparison, as snapwatchd did (contract 2.11)."""
        return len(requested) == len(self.vm_disks)

    def snapshot(self, requested, whole_vm):
        """Run take_snapshot with snapwatchd's budget; late or failed -> SnapshotFailed."""
        box = {}

        def run():
            try:
                box["result"] = self.take_snapshot(requested, whole_vm)
            except Exception as error:  # any failure of the callback is snapshots-failed
                box["error"] = error

        worker = threading.Thread(target=run, name="snapwatchd-snapshot", daemon=True)
        worker.start()
        worker.join(self.snapshot_timeout)
        if worker.is_alive():
            raise SnapshotFailed("snapshot not finished within {:g} s".format(
                self.snapshot_timeout))
        if "error" in box:
            raise SnapshotFailed("snapshot failed: {}".format(box["error"]))
        return box["result"]

    def create_snapshotinfo(self):
        """The Windows-only step (2.21-2.22); xapi uses none of it. Plugs no disk here."""
        return self._status("snapshotinfo-created")


def snapinfo(when, snapuuid, parent):
    """snapwatchd's V/snapinfo: whitespace-free XML (contract 2.15)."""
    return ("<VM.snapshot><time>{}</time><snapuuid>{}</snapuuid><parent>{}</parent>"
            "</VM.snapshot>").format(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(when)),
                                     snapuuid, parent)
