"""snapwatchd with the failure modes of contract section b injected, for the tests.

The product's Snapwatchd (xe_quiesce/host/snapwatchd_role.py) only behaves as the real
daemon did; each failure here overrides the one step it breaks:
F7 per-disk mode, F8 snapshot too slow, F9 a requested disk missing from the snapshot,
F10 `allowvssprovider` = `None`, F11 lock held (nothing written), F12
`create-snapshotinfo` fails, F13 snapwatchd not running (nothing ever written).
FaultyDom0Sim is the dom0 simulator serving with it.
"""
from testbed.dom0sim import Dom0Sim
from xe_quiesce import protocol
from xe_quiesce.host.snapwatchd_role import SnapshotFailed, Snapwatchd
from xe_quiesce.host.waiting import wait_for

FAILURES = ("F7", "F8", "F9", "F10", "F11", "F12", "F13")


class FaultySnapwatchd(Snapwatchd):
    """Snapwatchd failing as `failure` (one of FAILURES, or None: no failure) says."""

    def __init__(self, *args, failure=None, **kwargs):
        if failure is not None and failure not in FAILURES:
            raise ValueError("unknown snapwatchd failure {!r} (known: {})".format(
                failure, ", ".join(FAILURES)))
        super().__init__(*args, **kwargs)
        self.failure = failure

    def serve_once(self, timeout, stop=None):
        if self.failure == "F13":
            return None
        return super().serve_once(timeout, stop)

    def serve(self, stop):
        if self.failure != "F11":
            super().serve(stop)
            return
        while not stop():
            self.serve_once(0.5, stop)
            if self.outcomes:
                # the request stays unanswered; do not spin on the unchanged status
                wait_for(self.client, self.vss + "/status",
                         lambda v: v != protocol.CREATE_SNAPSHOTS, 3600, stop)

    def create_snapshots(self):
        if self.failure == "F11":
            return "locked: nothing written"
        return super().create_snapshots()

    def allowvssprovider(self):
        return "None" if self.failure == "F10" else super().allowvssprovider()

    def whole_vm(self, requested):
        return super().whole_vm(requested) and self.failure != "F7"

    def snapshot(self, requested, whole_vm):
        if self.failure == "F8":
            raise SnapshotFailed("snapshot not finished within {:g} s".format(
                self.snapshot_timeout))
        result = super().snapshot(requested, whole_vm)
        if self.failure == "F9" and result.vdis:
            result.vdis.pop(sorted(result.vdis)[0])
        return result

    def create_snapshotinfo(self):
        if self.failure == "F12":
            return self._status("snapshotinfo-failed", "injected F12")
        return super().create_snapshotinfo()


class FaultyDom0Sim(Dom0Sim):
    """The dom0 simulator whose snapwatchd fails as `failure` says (set it, then
    start_snapwatchd(), to change the failure between requests)."""

    SNAPWATCHD = FaultySnapwatchd

    def __init__(self, *args, failure=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.failure = failure

    def make_snapwatchd(self, client):
        return super().make_snapwatchd(client, failure=self.failure)
