"""A writer with a checkable invariant, and the checks a snapshot copy must pass.

The writer moves amounts between rows of an SQLite table in transactions, so the total
never changes; a copy taken while frozen must have a clean filesystem and that total.
Shared by the consistency tests and `make demo`.
"""
import os
import sqlite3
import subprocess
import sys
import tempfile

ROWS, START = 100, 1000
TOTAL = ROWS * START

WRITER = """
import random, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY, amount INTEGER)")
db.execute("CREATE TABLE IF NOT EXISTS moves (n INTEGER)")
if not db.execute("SELECT count(*) FROM account").fetchone()[0]:
    db.executemany("INSERT INTO account VALUES (?, ?)", [(i, %d) for i in range(%d)])
print("ready", flush=True)
while True:
    a, b = random.sample(range(%d), 2)
    x = random.randint(1, 50)
    db.execute("BEGIN")
    db.execute("UPDATE account SET amount = amount - ? WHERE id = ?", (x, a))
    db.execute("UPDATE account SET amount = amount + ? WHERE id = ?", (x, b))
    db.execute("INSERT INTO moves VALUES (1)")
    db.execute("COMMIT")
""" % (START, ROWS, ROWS)


class Writer(object):
    """The workload: a process committing transfers to `directory`/bank.db until stopped."""

    def __init__(self, directory):
        self.database = os.path.join(directory, "bank.db")
        self.process = subprocess.Popen([sys.executable, "-c", WRITER, self.database],
                                        stdout=subprocess.PIPE, universal_newlines=True)
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the writer did not start")

    def stop(self):
        self.process.kill()
        self.process.wait()


def read_bank(database):
    """(total of all accounts, number of committed moves); opening recovers a hot journal."""
    db = sqlite3.connect(database)
    try:
        total = db.execute("SELECT sum(amount) FROM account").fetchone()[0]
        moves = db.execute("SELECT count(*) FROM moves").fetchone()[0]
    finally:
        db.close()
    return total, moves


def _run(*argv):
    return subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)


def check_copy(image, fstype):
    """Check an image copy as a restore would use it; returns (problems, moves).

    ext4: `e2fsck -fn` must pass with no journal recovery needed. xfs on this kernel
    leaves its log to replay in a frozen copy, which a restore's first mount does: mount
    once (nouuid, the original is still mounted), then `xfs_repair -n` must pass.
    """
    problems = []
    if fstype == "ext4":
        fsck = _run("e2fsck", "-fn", image)
        if fsck.returncode != 0 or "recover" in fsck.stdout.lower():
            problems.append("e2fsck -fn: exit {}: {}".format(fsck.returncode, fsck.stdout[-300:]))
    mount_point = tempfile.mkdtemp(prefix="xe-quiesce-copy-")
    options = "loop,nouuid" if fstype == "xfs" else "loop"
    moves = None
    mount = _run("mount", "-t", fstype, "-o", options, image, mount_point)
    if mount.returncode != 0:
        problems.append("mount: " + mount.stdout)
    else:
        try:
            total, moves = read_bank(os.path.join(mount_point, "bank.db"))
            if total != TOTAL:
                problems.append("invariant broken: total {} != {}".format(total, TOTAL))
        except sqlite3.Error as error:
            problems.append("sqlite: {}".format(error))
        finally:
            _run("umount", mount_point)
    os.rmdir(mount_point)
    if fstype == "xfs":
        repair = _run("xfs_repair", "-n", image)
        if repair.returncode != 0:
            problems.append("xfs_repair -n: exit {}: {}".format(repair.returncode,
                                                                 repair.stdout[-300:]))
    return problems, moves
