"""Writer workload for the e2e domU: SQLite transfers between accounts, total always TOTAL.

Each transaction moves an amount between two rows and appends a journal row with a payload, so
the filesystem always has dirty data and the database grows.  A snapshot taken at any instant
must open (SQLite rolls back a hot journal as after a power cut) with the total intact and
`PRAGMA integrity_check` = ok: that is the invariant dom0 checks in every copy (check()).

The commit counter goes to /run (tmpfs, never frozen) so the harness can tell a frozen
filesystem (counter stalls) from a thawed one without touching the data mount.
"""

import os
import random
import sqlite3
import sys
import time

ACCOUNTS = 100
TOTAL = ACCOUNTS * 1000
DB_NAME = "bank.db"


def open_db(folder):
    db = sqlite3.connect(os.path.join(folder, DB_NAME), isolation_level=None, timeout=60)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY, balance INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS transfer (id INTEGER PRIMARY KEY, src INTEGER,"
               " dst INTEGER, amount INTEGER, payload BLOB)")
    if db.execute("SELECT COUNT(*) FROM account").fetchone()[0] == 0:
        db.execute("BEGIN")
        db.executemany("INSERT INTO account VALUES (?, ?)",
                       [(i, TOTAL // ACCOUNTS) for i in range(ACCOUNTS)])
        db.execute("COMMIT")
    return db


def run(folder, counter, pause):
    db = open_db(folder)
    rng = random.Random()
    count = 0
    while True:
        src, dst = rng.sample(range(ACCOUNTS), 2)
        amount = rng.randint(1, 50)
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE account SET balance = balance - ? WHERE id = ?", (amount, src))
        db.execute("INSERT INTO transfer (src, dst, amount, payload) VALUES (?, ?, ?, ?)",
                   (src, dst, amount, os.urandom(rng.randint(512, 4096))))
        db.execute("UPDATE account SET balance = balance + ? WHERE id = ?", (amount, dst))
        db.execute("COMMIT")
        count += 1
        tmp = counter + ".tmp"
        with open(tmp, "w") as fh:
            fh.write("%d %f\n" % (count, time.time()))
        os.replace(tmp, counter)
        time.sleep(pause)


def check(folder):
    """(ok, detail) for the database in folder: the invariant a consistent snapshot must keep."""
    path = os.path.join(folder, DB_NAME)
    if not os.path.exists(path):
        return False, "no %s" % DB_NAME
    db = sqlite3.connect(path, isolation_level=None)
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        total, rows = db.execute("SELECT SUM(balance), COUNT(*) FROM account").fetchone()
        transfers = db.execute("SELECT COUNT(*) FROM transfer").fetchone()[0]
    finally:
        db.close()
    ok = integrity == "ok" and total == TOTAL and rows == ACCOUNTS
    return ok, "integrity=%s total=%s/%d accounts=%s transfers=%d" % (
        integrity, total, TOTAL, rows, transfers)


if __name__ == "__main__":
    if sys.argv[1] == "check":
        good, detail = check(sys.argv[2])
        print(detail)
        sys.exit(0 if good else 1)
    run(sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.2)
