"""`make demo`, part 2: the whole xenstore conversation of one quiesced snapshot.

A real C xenstored; the dom0 simulator (xenopsd's setup, snapwatchd, XAPI's call) built
on the product's host roles; the guest daemon `xe-quiesce run` as its own process; two
loop filesystems (ext4, xfs) as the VM's two disks, each with an SQLite writer. The
host's "snapshot" copies the images while the guest holds them frozen; the copies are
then checked the way a restore would use them. Printed: what each side wrote, in the
order xenstored applied it (from its -T trace). Run as root.
"""
import json
import os
import tempfile
import time
import uuid

from testbed.dom0sim import Dom0Sim, copy_images
from testbed.guestd import GuestDaemon
from testbed.loopfs import LoopFs
from testbed.xenstored import Xenstored
from tests import xstrace
from tests.consistency import TOTAL, Writer, check_copy
from xe_quiesce.xenstore import XenstoreClient

SHOWN_ROLES = ("xapi", "guest", "snapwatchd")


def say(text):
    print(text, flush=True)


def wait_idle(client, home, daemon, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise SystemExit("xe-quiesce run exited:\n" + daemon.log())
        if (client.read_or(home + "/control/feature-quiesce") == "1"
                and client.read_or(home + "/data/xe-quiesce/state") == "idle"):
            return
        time.sleep(0.05)
    raise SystemExit("xe-quiesce run did not come up:\n" + daemon.log())


def show_conversation(trace_path, sim):
    say("== what each side wrote, in xenstored's order (C = {}/control/snapshot, V = {})".format(
        sim.home, sim.vss))
    for role, op, path, value in xstrace.by_role(trace_path, sim.home, sim.vss):
        if role not in SHOWN_ROLES or path.startswith(sim.home + "/data/updated"):
            continue
        path = path.replace(sim.home + "/control/snapshot", "C").replace(sim.vss, "V")
        path = path.replace(sim.home + "/", "D/")
        shown = "" if value is None else " = {!r}".format(
            value if len(value) <= 60 else value[:57] + "...")
        say("   {:<10} {:<5} {}{}".format(role, op, path, shown))


def run(workdir, xenstored):
    filesystems = [LoopFs(workdir, "ext4").create(), LoopFs(workdir, "xfs").create()]
    writers, sim, daemon, client = [], None, None, None
    try:
        vdis = [str(uuid.uuid4()) for _ in filesystems]
        images = {vdi: fs.image for vdi, fs in zip(vdis, filesystems)}
        sim = Dom0Sim(xenstored.uri, vdis, copy_images(images), snapshot_timeout=10.0).start()
        config = os.path.join(workdir, "xe-quiesce.conf")
        with open(config, "w") as handle:
            handle.write("[freeze]\nmounts = {}\nmax-frozen = 30\n[state]\nrun-dir = {}\n".format(
                " ".join(fs.mount_point for fs in filesystems), os.path.join(workdir, "run")))
        daemon = GuestDaemon(config, ["--xenstore", xenstored.uri, "--domain-path", sim.home],
                             os.path.join(workdir, "daemon.log")).start()
        client = XenstoreClient(xenstored.uri)
        client.connect()
        wait_idle(client, sim.home, daemon)
        writers = [Writer(fs.mount_point) for fs in filesystems]
        time.sleep(1)
        say("== VM.snapshot_with_quiesce (dom0 simulator) -> xe-quiesce run (guest daemon)")
        started = time.monotonic()
        result = sim.snapshot_with_quiesce(ack_timeout=60, status_timeout=120)
        manifest = json.loads(result.snapid)
        say("   snapshot VM {} in {:.2f} s; guest froze {} for {:.3f} s".format(
            result.snapuuid, time.monotonic() - started, " ".join(manifest["frozen"]),
            manifest["window_seconds"]))
        wait_idle(client, sim.home, daemon)
        show_conversation(xenstored.trace_path, sim)
        say("== check the snapshot copies as a restore would use them")
        failed = False
        for fs in filesystems:
            problems, moves = check_copy(fs.image + ".snapshot", fs.fstype)
            failed = failed or bool(problems)
            say("   {:<5} {}: {} committed transfers, total {} {}".format(
                fs.fstype, "CLEAN" if not problems else "BROKEN", moves, TOTAL,
                "; ".join(problems)))
        return not failed
    finally:
        for writer in writers:
            writer.stop()
        if daemon is not None:
            daemon.stop()
        if client is not None:
            client.close()
        if sim is not None:
            sim.stop()
        for fs in filesystems:
            fs.destroy()


def main():
    """The xenstore demo; True when the snapshot was taken and its copies check clean."""
    if os.geteuid() != 0:
        raise SystemExit("the xenstore demo needs root (loop devices, mount, FIFREEZE)")
    say("== xenstore conversation: real xenstored, dom0 simulator, xe-quiesce run")
    with tempfile.TemporaryDirectory(prefix="xe-quiesce-xs-demo-") as workdir:
        with Xenstored() as xenstored:
            xenstored.start()
            return run(workdir, xenstored)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
