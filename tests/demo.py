"""`make demo`: what quiescing changes in a snapshot, on two real filesystems.

Run as root. A loop-mounted xfs stands for the host's storage repository; on it live the
images of two guest filesystems (ext4, xfs), each with an SQLite writer moving money
between accounts. A reflink copy of an image (instant and atomic, as a VDI snapshot is)
stands for the host's snapshot of that disk. One pair of copies is taken while the
writers run, without quiescing (what a plain snapshot of a running VM gives); one pair
while xe-quiesce holds the filesystems frozen. Each copy is then checked the way a
restore would use it. When the xenstore demo is present, the whole xenstore
conversation of a quiesced snapshot runs afterwards.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from testbed.loopfs import LoopFs
from tests.consistency import TOTAL, Writer, check_copy

INTRO = """\
xe-quiesce demo: a snapshot of two busy filesystems, with and without quiescing.
  Two filesystems (ext4, xfs) each hold an SQLite database of 100 accounts totalling
  {total}; a writer keeps moving money between them in transactions. A reflink copy of
  each disk image stands for the host's snapshot of that disk (instant and atomic).
  We take one snapshot without quiescing, one with xe-quiesce, and check both as a
  restore would.""".format(total=TOTAL)
CLEAN_MEANS = """\
  CLEAN means the copy needed no recovery of any kind: the filesystem check passes
  without replaying a journal (xfs: its log replay on mount, then xfs_repair -n), SQLite
  opens it, and the accounts still total {total} after N committed transfers, so every
  transaction is in the copy whole or not at all.""".format(total=TOTAL)


def say(text):
    print(text, flush=True)


def cli(config, *args):
    result = subprocess.run([sys.executable, "-m", "xe_quiesce.cli"] + list(args) +
                            ["--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    if result.returncode != 0:
        raise SystemExit("xe-quiesce {} failed: {}".format(args[0], result.stderr))
    return result


def snapshot(filesystems, label):
    """Reflink copies of the images: one atomic point in time per disk, as the host's."""
    copies = []
    for fs in filesystems:
        copy = "{}.{}".format(fs.image, label)
        subprocess.run(["cp", "--reflink=always", fs.image, copy], check=True)
        copies.append((fs.fstype, copy))
    return copies


def check(copies):
    """Check each copy; print one line each; returns {fstype: problems}."""
    found = {}
    for fstype, copy in copies:
        problems, moves = check_copy(copy, fstype)
        found[fstype] = problems
        say("   {:<5} {}: {} committed transfers, total {}{}".format(
            fstype, "CLEAN" if not problems else "NOT CLEAN", moves, TOTAL,
            "".join("\n         " + describe(problem) for problem in problems)))
    return found


def describe(problem):
    """One line for a problem check_copy found."""
    if problem.startswith("e2fsck") and "recover" in problem.lower():
        return "ext4's journal must be replayed before this copy is usable (e2fsck -fn)"
    return " ".join(problem.split())[:150]


def verdict(quiesced, plain):
    if any(quiesced.values()):
        return ("Verdict: FAILED, a quiesced snapshot was not clean ({}).".format(
            ", ".join(fs for fs, problems in quiesced.items() if problems)))
    needed = [fs for fs, problems in plain.items() if problems]
    if needed:
        return ("Verdict: with xe-quiesce the snapshot restores as is, while without it {} "
                "needed recovery, as after a power cut.".format(" and ".join(needed)))
    return ("Verdict: with xe-quiesce the snapshot restores as is; this time the one taken "
            "without it happened to need no recovery either (a busier disk shows the "
            "difference).")


def freeze_and_copy(workdir):
    repository = LoopFs(workdir, "xfs", name="storage-repository", size_mb=1024).create()
    filesystems, writers = [], []
    try:
        filesystems = [LoopFs(repository.mount_point, fstype,
                              mount_point=os.path.join(workdir, fstype)).create()
                       for fstype in ("ext4", "xfs")]
        config = os.path.join(workdir, "xe-quiesce.conf")
        with open(config, "w") as handle:
            handle.write("[freeze]\nmounts = {}\nmax-frozen = 30\n[state]\nrun-dir = {}\n".format(
                " ".join(fs.mount_point for fs in filesystems), os.path.join(workdir, "run")))
        say(INTRO)
        say("== what xe-quiesce would freeze (xe-quiesce plan)")
        say(cli(config, "plan").stdout.rstrip())
        writers = [Writer(fs.mount_point) for fs in filesystems]
        time.sleep(1)
        say("== snapshot WITHOUT quiescing, writers running")
        plain = snapshot(filesystems, "plain")
        say("   copied {}".format(" ".join(fs.fstype for fs in filesystems)))
        time.sleep(0.5)
        say("== snapshot WITH quiescing (xe-quiesce freeze, copy, xe-quiesce thaw)")
        frozen = json.loads(cli(config, "freeze", "--json").stdout)
        started = time.monotonic()
        quiesced = snapshot(filesystems, "quiesced")
        say("   frozen {}; images copied in {:.3f} s".format(
            " ".join(frozen["frozen"]), time.monotonic() - started))
        say("   " + cli(config, "thaw").stdout.strip())
        for writer in writers:
            writer.stop()
        writers = []
        say("== check the copies as a restore would use them")
        say(" without quiescing:")
        plain_found = check(plain)
        say(" with quiescing:")
        quiesced_found = check(quiesced)
        say(CLEAN_MEANS)
        say("== status (xe-quiesce status)")
        say(cli(config, "status").stdout.rstrip())
        return not any(quiesced_found.values()), verdict(quiesced_found, plain_found)
    finally:
        for writer in writers:
            writer.stop()
        for fs in filesystems:
            fs.destroy()
        repository.destroy()


def main():
    if os.geteuid() != 0:
        raise SystemExit("make demo needs root (loop devices, mount, FIFREEZE)")
    with tempfile.TemporaryDirectory(prefix="xe-quiesce-demo-") as workdir:
        ok, closing = freeze_and_copy(workdir)
    try:
        from tests import demo_xenstore
    except ImportError:
        demo_xenstore = None
    if demo_xenstore is not None:
        if not demo_xenstore.main():
            ok = False
            closing = "Verdict: FAILED, the xenstore conversation's snapshot was not clean."
    say("DEMO {}".format("PASSED" if ok else "FAILED"))
    say(closing)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
