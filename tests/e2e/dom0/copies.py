"""The bed's "VDI snapshot": copies of the backing files taken while the guest is frozen, and the
checks that decide whether such a copy is consistent.

A copy is checked the way a restore would use it: ext4 with `e2fsck -fn` untouched (a frozen
ext4 has a clean journal); xfs mounted once to replay its log (a frozen xfs still has one on
6.1), unmounted, then `xfs_repair -n`; the LVM pair activated from the copies only, then
`e2fsck -fn` on the LV.  In each mounted copy the workload's SQLite invariant must hold.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, "/e2e/guest")
import workload  # noqa: E402
from shell import run  # noqa: E402

VG, LV = "e2evg", "data"


def take(disks, vdis, folder):
    """Copy the backing file of each requested VDI; {vdi: snapshot vdi uuid}, files in folder."""
    os.makedirs(folder, exist_ok=True)
    snaps = {}
    for disk in disks:
        if disk.vdi in vdis:
            if not disk.readonly:  # the shared read-only root cannot have changed
                subprocess.run(["cp", "--sparse=always", disk.path,
                                os.path.join(folder, disk.name + ".img")], check=True)
            snaps[disk.vdi] = str(uuid.uuid4())
    return snaps


def check_sqlite(mountpoint):
    ok, detail = workload.check(mountpoint)
    return ok, "sqlite " + detail


def mounted(device, check):
    """Mount device (read-write: SQLite may roll back a hot journal), run check, unmount."""
    point = tempfile.mkdtemp(prefix="e2e-copy-")
    try:
        code, text = run("mount", device, point)
        if code:
            return False, "mount failed: " + text[-200:]
        try:
            return check(point)
        finally:
            run("umount", point)
    finally:
        os.rmdir(point)


def check_ext4(image):
    code, text = run("e2fsck", "-fn", image)
    if code:
        return False, "e2fsck -fn exit %d: %s" % (code, text[-300:])
    ok, detail = mounted(image, check_sqlite)
    return ok, "e2fsck clean; " + detail


def check_xfs(image):
    ok, detail = mounted(image, check_sqlite)  # the mount replays the log, as a restore would
    code, text = run("xfs_repair", "-n", image)
    if code:
        return False, "xfs_repair -n exit %d after log replay: %s; %s" % (code, text[-300:],
                                                                         detail)
    return ok, "xfs_repair clean; " + detail


def check_lvm(images):
    """Activate the VG from the copies alone (filter), so dom0 never touches the live PVs."""
    loops = []
    conf = tempfile.mkdtemp(prefix="e2e-lvm-")
    try:
        for image in images:
            code, text = run("losetup", "--find", "--show", image)
            if code:
                return False, "losetup: " + text
            loops.append(text)
        accept = ", ".join('"a|^%s$|"' % loop for loop in loops)
        with open(os.path.join(conf, "lvm.conf"), "w") as fh:
            fh.write('devices { filter = [ %s, "r|.*|" ] global_filter = [ %s, "r|.*|" ]'
                     " obtain_device_list_from_udev = 0 use_devicesfile = 0 }\n"
                     "activation { udev_sync = 0 udev_rules = 0 }\n"
                     'global { locking_dir = "%s" }\n' % (accept, accept, conf))
        env = dict(os.environ, LVM_SYSTEM_DIR=conf)
        code, text = run("vgchange", "-ay", VG, env=env)
        if code:
            return False, "vgchange -ay on the copies: " + text[-300:]
        try:
            lv = "/dev/%s/%s" % (VG, LV)
            code, text = run("e2fsck", "-fn", lv)
            if code:
                return False, "e2fsck -fn on the LV copy exit %d: %s" % (code, text[-300:])
            ok, detail = mounted(lv, check_sqlite)
            return ok, "e2fsck clean; " + detail
        finally:
            run("vgchange", "-an", VG, env=env)
    finally:
        for loop in loops:
            run("losetup", "-d", loop)
        shutil.rmtree(conf, ignore_errors=True)


def check_all(folder, lvm_in_guest):
    """{name: (ok, detail)} for every copy in folder."""
    results = {}
    ext4, xfs = os.path.join(folder, "ext4.img"), os.path.join(folder, "xfs.img")
    pvs = [os.path.join(folder, n) for n in ("pv1.img", "pv2.img")]
    results["ext4"] = check_ext4(ext4) if os.path.exists(ext4) else (False, "not copied")
    results["xfs"] = check_xfs(xfs) if os.path.exists(xfs) else (False, "not copied")
    if lvm_in_guest:
        results["lvm"] = check_lvm(pvs) if all(map(os.path.exists, pvs)) else \
            (False, "PVs not copied")
    return results
