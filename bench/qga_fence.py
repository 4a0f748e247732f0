"""Inside qemu-ga's private mount namespace: detach every loop mount but the bench's, exec.

Usage (under `unshare -m --propagation private`):
    python -m bench.qga_fence MOUNT... -- COMMAND...
qemu-ga's thaw walks its mount table and thaws whatever is frozen there; on a machine
where other programs (test suites) freeze their own loop filesystems, that table must
hold no loop mount except the bench's. Detaching in this namespace leaves them mounted
everywhere else.
"""
import os
import subprocess
import sys


def foreign_loop_mounts(allowed):
    points = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            if fields[2].startswith("7:") and point not in allowed:
                points.append(point)
    return sorted(set(points), key=lambda p: p.count("/"), reverse=True)


def main(argv):
    split = argv.index("--")
    allowed, command = set(argv[:split]), argv[split + 1:]
    for point in foreign_loop_mounts(allowed):
        subprocess.run(["umount", "-l", point], check=True)
    left = foreign_loop_mounts(allowed)
    if left:
        raise SystemExit("could not detach: " + " ".join(left))
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
