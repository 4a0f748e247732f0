"""The testbed's dom0: a thin wrapper over the product's host roles (xe_quiesce.host).

xenopsd builds the guest's home, snapwatchd serves in a thread (SNAPWATCHD says
which: tests/faulty_snapwatchd.py's injects F7-F13), and `snapshot_with_quiesce`
plays XAPI. Each role has its own xenstore connection, as the real daemons did.
Timeouts are parameters so tests stay short; the snapshot itself is whatever
`take_snapshot` does (tests and bench copy loop images).
"""
import subprocess
import threading
import uuid

from testbed import domains
from xe_quiesce.host import xapi_role
from xe_quiesce.host.snapwatchd_role import SnapshotResult, Snapwatchd
from xe_quiesce.xenstore import XenstoreClient

DISK_DEVIDS = (51712, 51728, 51744, 51760)
CDROM_DEVID = 5632


def copy_images(images, before=None):
    """A take_snapshot copying each VDI's image (sparse) to `<image>.snapshot`.

    `images` maps VDI uuid -> image path; `before()` runs first (tests probe there).
    """
    def take(vdis, whole_vm):
        if before is not None:
            before()
        snapshots = {}
        for vdi in vdis:
            subprocess.run(["cp", "--sparse=always", images[vdi], images[vdi] + ".snapshot"],
                           check=True)
            snapshots[vdi] = str(uuid.uuid4())
        return SnapshotResult(str(uuid.uuid4()), snapshots)
    return take


class Dom0Sim(object):
    """One VM on a simulated XAPI host; `vdis` are its disk VDIs (one VBD each)."""

    SNAPWATCHD = Snapwatchd  # the product's; a subclass of the simulator may serve another

    def __init__(self, uri, vdis, take_snapshot, domid=7, cdrom=True,
                 snapshot_timeout=5.0, vm_disks=None, timeout=5.0):
        self.uri = uri
        self.domid = domid
        self.vm_uuid = str(uuid.uuid4())
        self.vbds = [domains.Vbd(devid, vdi, "disk") for devid, vdi in zip(DISK_DEVIDS, vdis)]
        if cdrom:
            self.vbds.append(domains.Vbd(CDROM_DEVID, None, "cdrom"))
        self.vm_disks = list(vdis) if vm_disks is None else list(vm_disks)
        self.take_snapshot = take_snapshot
        self.snapshot_timeout = snapshot_timeout
        self.timeout = timeout
        self.client = XenstoreClient(uri, timeout=timeout)
        self.home = self.vss = None
        self.snapwatchd = None
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        """Build the domain (xenopsd) and start snapwatchd."""
        self.client.connect()
        self.home, self.vss = domains.build_domain(self.client, self.domid, self.vm_uuid,
                                                   "guest", self.vbds)
        self.start_snapwatchd()
        return self

    def start_snapwatchd(self):
        client = XenstoreClient(self.uri, timeout=self.timeout)
        client.connect()
        self.snapwatchd = self.make_snapwatchd(client)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, args=(client,),
                                        name="snapwatchd", daemon=True)
        self._thread.start()

    def make_snapwatchd(self, client, **options):
        """This VM's snapwatchd on `client`; `options` are SNAPWATCHD's own."""
        return self.SNAPWATCHD(client, self.vss, self.home, self.vm_disks, self.take_snapshot,
                               snapshot_timeout=self.snapshot_timeout, **options)

    def _serve(self, client):
        try:
            self.snapwatchd.serve(self._stop.is_set)
        except Exception:  # xenstored killed under it: the test restarts it if needed
            pass
        finally:
            client.close()

    def stop_snapwatchd(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def snapshot_with_quiesce(self, ack_timeout=5.0, status_timeout=30.0, known_vm=None):
        """XAPI's call on its own connection; returns a QuiescedSnapshot or raises
        xapi_role.XapiError."""
        with XenstoreClient(self.uri, timeout=self.timeout) as client:
            return xapi_role.snapshot_with_quiesce(
                client, self.home, self.vm_uuid, ack_timeout=ack_timeout,
                status_timeout=status_timeout, known_vm=known_vm)

    def stop(self):
        self.stop_snapwatchd()
        self.client.close()
