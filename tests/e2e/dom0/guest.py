"""A domU of the e2e bed, seen from dom0: its disks, its XAPI-like xenstore decoration, and the
command channel to the harness running inside it.

xvda is the guest's root: QEMU's read-only virtio disk in dom0, shared by every domU.  The
data disks are sparse files in dom0 attached with blkback through loop devices (the bed's own
hotplug script, block-e2e, sets those up).  After `xl create -p` and before the guest runs,
dom0 gives the domain what XAPI/xenopsd would: `sm-data/vdi-uuid` under every VBD backend,
`/vss/<vm-uuid>` owned by the guest, `D/vss`, and guest-owned `control/`, `data/`, `attr/`,
`vm-data/` (plain xl leaves `control/` read-only to the guest).
"""

import base64
import json
import os
import subprocess
import time
import uuid

import shell
import xscli
from shell import run

SRV = "/srv/e2e"
BLOCK_SCRIPT = "/e2e/dom0/block-e2e"


def linux_tuning():
    """dom0's own speed settings from bed.py (mitigations, self-tests...), for the domU too."""
    with open("/proc/cmdline") as fh:
        words = fh.read().split()
    own = ("console", "earlyprintk", "rdinit", "loglevel")
    return " ".join(w for w in words if not w.startswith("E2E_") and w.split("=")[0] not in own)

ROOT_DISK = "/dev/vda"
# name, guest device, size, filesystem dom0 makes (None: the guest builds LVM on the pair).
DISKS = [("ext4", "xvdb", "96M", "ext4"), ("xfs", "xvdc", "320M", "xfs"),
         ("pv1", "xvdd", "64M", None), ("pv2", "xvde", "64M", None)]


class GuestError(Exception):
    pass


def must(*cmd):
    return shell.must(*cmd, error=GuestError)


class Disk(object):
    """A VBD of the guest and its VDI; `readonly` disks are never written, so their
    snapshot needs no copy."""

    def __init__(self, name, vdev, size, fs, path=None):
        self.name, self.vdev, self.size, self.fs = name, vdev, size, fs
        self.path = path or os.path.join(SRV, name + ".img")
        self.readonly = path is not None
        self.vdi = str(uuid.uuid4())

    def spec(self):
        return "'format=raw,vdev=%s,access=%s,script=%s,target=%s'" % (
            self.vdev, "ro" if self.readonly else "rw", BLOCK_SCRIPT, self.path)

    def create(self):
        must("truncate", "-s", self.size, self.path)
        if self.fs == "ext4":
            must("mkfs.ext4", "-q", "-F", "-L", "e2e-ext4", self.path)
        elif self.fs == "xfs":
            must("mkfs.xfs", "-q", "-f", "-L", "e2e-xfs", self.path)


def make_disks():
    os.makedirs(SRV, exist_ok=True)
    disks = [Disk(*spec) for spec in DISKS]
    for disk in disks:
        disk.create()
    return [Disk("root", "xvda", None, None, ROOT_DISK)] + disks


class Guest(object):
    """One domU: `with Guest(...) as g:` boots it decorated and ready for commands."""

    def __init__(self, kind, disks, agent, log):
        self.kind, self.disks, self.agent, self.log = kind, disks, agent, log
        self.name = "e2e-" + kind
        self.vm_uuid = str(uuid.uuid4())
        self.domid = None
        self.seq = 0
        self.tail = None
        self.boot_s = None

    @property
    def home(self):
        return "/local/domain/%d" % self.domid

    def config(self):
        disks = ",".join(d.spec() for d in self.disks)
        return "\n".join([
            'name = "%s"' % self.name,
            'type = "%s"' % self.kind,
            'uuid = "%s"' % self.vm_uuid,
            'kernel = "/boot/vmlinuz"',
            'ramdisk = "/e2e/domu-boot.cpio"',
            'extra = "console=hvc0 rdinit=/init loglevel=7 %s E2E_AGENT=%s"' % (
                linux_tuning(), self.agent),
            "memory = 512",
            # One vCPU for PVH: nested paging is emulated by QEMU, and SMP there costs more.
            "vcpus = %d" % (1 if self.kind == "pvh" else 2),
            "disk = [%s]" % disks,
            'on_poweroff = "destroy"',
            'on_crash = "destroy"',
            'on_reboot = "destroy"',  # a reset must show as a dead domU, not a silent reboot
            ""])

    def __enter__(self):
        start = time.monotonic()
        cfg = "/tmp/%s.cfg" % self.name
        with open(cfg, "w") as fh:
            fh.write(self.config())
        code, text = run("xl", "create", "-p", cfg)
        if code:
            self.log("xl create failed:\n%s" % text)
            for path in ("/var/log/xen/xen-hotplug.log", "/var/log/xen/xl-%s.log" % self.name):
                if os.path.exists(path):
                    with open(path) as fh:
                        self.log("%s:\n%s" % (path, fh.read()[-3000:]))
            raise GuestError("xl create -p failed (exit %d): %s" % (code, text[-300:]))
        self.domid = int(must("xl", "domid", self.name))
        self.log("created %s domid %d (vm %s)" % (self.name, self.domid, self.vm_uuid))
        self.decorate()
        self.follow_console()
        must("xl", "unpause", self.name)
        if not xscli.wait(lambda: xscli.read(self.home + "/e2e/ready"), 180, 0.5):
            raise GuestError("the domU harness did not come up within 180 s")
        self.boot_s = time.monotonic() - start
        self.log("%s up in %.1f s" % (self.name, self.boot_s))
        return self

    def alive(self):
        """Whether the domain still exists (on_crash/on_reboot destroy it)."""
        return run("xl", "domid", self.name)[0] == 0

    def __exit__(self, *exc):
        try:
            self.cmd("shutdown")
        except GuestError as err:
            self.log("shutdown: %s" % err)
        if not xscli.wait(lambda: not self.alive(), 30, 0.5):
            run("xl", "destroy", self.name)
        if self.tail:
            time.sleep(0.5)  # let the last console lines through
            self.tail.terminate()
        return False

    def decorate(self):
        """What xenopsd gives a domain before it runs (contract §(a) phase 0, §(c))."""
        backends = "/local/domain/0/backend/vbd/%d" % self.domid
        by_vdev = {d.vdev: d for d in self.disks}
        for devid in xscli.ls(backends):
            dev = xscli.read("%s/%s/dev" % (backends, devid))
            if dev in by_vdev:
                xscli.write("%s/%s/sm-data/vdi-uuid" % (backends, devid), by_vdev[dev].vdi)
        v = "/vss/" + self.vm_uuid
        xscli.rm(v)
        xscli.write(v, "")
        xscli.chmod(v, ["n%d" % self.domid])
        xscli.write(self.home + "/vss", v)
        for sub in ("control", "data", "attr", "vm-data"):
            if not xscli.exists(self.home + "/" + sub):
                xscli.write(self.home + "/" + sub, "")
            xscli.chmod(self.home + "/" + sub, ["n%d" % self.domid])
        xscli.write(self.home + "/e2e/cmd", "")
        xscli.chmod(self.home + "/e2e", ["n%d" % self.domid], recursive=True)

    def follow_console(self):
        """Copy the domU console (xenconsoled --log=guest) into dom0's console: one serial log."""
        path = "/var/log/xen/console/guest-%s.log" % self.name
        self.tail = subprocess.Popen(
            "exec tail -n +1 -F %s 2>/dev/null | sed -u 's/^/[%s] /' >/dev/console"
            % (path, self.name), shell=True, start_new_session=True)

    def cmd(self, op, *args, timeout=180):
        """Run one harness op in the domU; its result dict, or GuestError."""
        self.seq += 1
        line = " ".join([str(self.seq), op] + ["'%s'" % a for a in args])
        xscli.write(self.home + "/e2e/cmd", line)
        prefix = "%d " % self.seq
        reply = xscli.wait(
            lambda: (lambda r: r if r and r.startswith(prefix) else None)(
                xscli.read(self.home + "/e2e/reply")), timeout, 0.05)
        if not reply:
            if not self.alive():
                raise GuestError("the domU died during %r (crash or reset: see the serial log)"
                                 % op)
            raise GuestError("no reply to %r within %d s" % (op, timeout))
        data = json.loads(base64.b64decode(reply[len(prefix):]).decode())
        if not data["ok"]:
            raise GuestError("%s: %s" % (op, data["error"]))
        return data["result"]

    def progress(self):
        return self.cmd("progress")["counts"]

    def vbd_count(self):
        return len(xscli.ls("%s/device/vbd" % self.home))
