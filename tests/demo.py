"""`make demo`: quiesce two real filesystems with a writer running, snapshot, check.

Run as root. Two loop filesystems (ext4, xfs) get an SQLite writer each; the agent's
CLI freezes them, the images are copied while frozen (standing in for the host's VDI
snapshot), the CLI thaws, and each copy is checked the way a restore would use it.
When the xenstore demo is present, the whole xenstore conversation runs afterwards.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from tests.consistency import TOTAL, Writer, check_copy
from tests.loopfs import LoopFs


def say(text):
    print(text, flush=True)


def cli(config, *args):
    result = subprocess.run([sys.executable, "-m", "xe_quiesce.cli"] + list(args) +
                            ["--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    if result.returncode != 0:
        raise SystemExit("xe-quiesce {} failed: {}".format(args[0], result.stderr))
    return result


def freeze_and_copy(workdir):
    filesystems = [LoopFs(workdir, "ext4").create(), LoopFs(workdir, "xfs").create()]
    writers = []
    try:
        config = os.path.join(workdir, "xe-quiesce.conf")
        with open(config, "w") as handle:
            handle.write("[freeze]\nmounts = {}\nmax-frozen = 30\n[state]\nrun-dir = {}\n".format(
                " ".join(fs.mount_point for fs in filesystems), os.path.join(workdir, "run")))
        say("== plan (xe-quiesce plan)")
        say(cli(config, "plan").stdout.rstrip())
        writers = [Writer(fs.mount_point) for fs in filesystems]
        time.sleep(1)
        say("== freeze with two SQLite writers running (xe-quiesce freeze)")
        frozen = json.loads(cli(config, "freeze", "--json").stdout)
        started = time.monotonic()
        copies = []
        for fs in filesystems:
            copy = fs.image + ".snapshot"
            subprocess.run(["cp", "--sparse=always", fs.image, copy], check=True)
            copies.append((fs.fstype, copy))
        say("   frozen {}; images copied in {:.2f} s".format(
            " ".join(frozen["frozen"]), time.monotonic() - started))
        say("== thaw (xe-quiesce thaw)")
        say("   " + cli(config, "thaw").stdout.strip())
        say("== check the copies as a restore would use them")
        failed = False
        for fstype, copy in copies:
            problems, moves = check_copy(copy, fstype)
            failed = failed or bool(problems)
            say("   {:<5} {}: {} committed transfers, total {} {}".format(
                fstype, "CLEAN" if not problems else "BROKEN", moves, TOTAL,
                "; ".join(problems)))
        say("== status (xe-quiesce status)")
        say(cli(config, "status").stdout.rstrip())
        return not failed
    finally:
        for writer in writers:
            writer.stop()
        for fs in filesystems:
            fs.destroy()


def main():
    if os.geteuid() != 0:
        raise SystemExit("make demo needs root (loop devices, mount, FIFREEZE)")
    with tempfile.TemporaryDirectory(prefix="xe-quiesce-demo-") as workdir:
        ok = freeze_and_copy(workdir)
    try:
        from tests import demo_xenstore
    except ImportError:
        demo_xenstore = None
    if demo_xenstore is not None:
        ok = demo_xenstore.main() and ok
    say("DEMO {}".format("PASSED" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
