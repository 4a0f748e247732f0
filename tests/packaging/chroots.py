"""Cached Debian chroots for the .deb install tests.

debootstrap takes minutes, so each suite is built once and kept as a tarball under
/var/cache/xe-quiesce/chroots/; a test run only unpacks it (seconds).  The tarball
also holds fresh apt lists and the downloaded .debs of our dependencies, so a cached
run installs the package with apt's real dependency resolution but without the
network.  The tarball's name carries a hash of its recipe (mirror, packages, this
module's build code), so a changed recipe builds a new one instead of reusing a stale
tarball; delete old ones at will.

Run as a script to prebuild: ``python3 tests/packaging/chroots.py bullseye trixie``.
"""
import contextlib
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile

CACHE_DIR = os.environ.get("XEQ_CHROOT_CACHE", "/var/cache/xe-quiesce/chroots")
MIRROR = "http://deb.debian.org/debian"
# systemd: gives the chroot deb-systemd-helper's real target (and systemctl) as on a
# normal install; the python3-* packages are our Depends, and openrc what the OpenRC
# test installs, fetched into the cache only.
INCLUDE = ["systemd"]
DEPENDS = ["python3-pyxs", "python3-psutil", "python3-click", "openrc"]
# Keep maintainer scripts from starting services inside the chroot (policy-rc.d(8)).
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def recipe_key(suite):
    """A short hash of everything that makes the suite's tarball what it is."""
    recipe = json.dumps([suite, MIRROR, INCLUDE, DEPENDS, POLICY_RC_D,
                         inspect.getsource(build), inspect.getsource(run_in)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def tarball(suite):
    return os.path.join(CACHE_DIR, "%s-%s.tar.zst" % (suite, recipe_key(suite)))


def run_in(root, *argv, check=True, env=None):
    """Run argv chrooted into root, in private mount and pid namespaces.

    The private namespaces give the command its own /proc (psutil needs one) that
    disappears with it, so nothing stays mounted if a test dies half-way.
    """
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8",
                "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    full_env.update(env or {})
    cmd = ["unshare", "--mount", "--pid", "--fork",
           "--mount-proc=" + os.path.join(root, "proc"), "chroot", root] + list(argv)
    proc = subprocess.run(cmd, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s" % (" ".join(argv), proc.returncode,
                                                      proc.stdout))
    return proc


def build(suite):
    """debootstrap suite and store it as a tarball (atomically: no half caches)."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix=suite + ".", dir=CACHE_DIR)
    try:
        root = os.path.join(work, "root")
        subprocess.run(["debootstrap", "--variant=minbase",
                        "--include=" + ",".join(INCLUDE), suite, root, MIRROR],
                       check=True, stdout=subprocess.DEVNULL,
                       env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        policy = os.path.join(root, "usr/sbin/policy-rc.d")
        with open(policy, "w") as fh:
            fh.write(POLICY_RC_D)
        os.chmod(policy, 0o755)
        run_in(root, "apt-get", "update", "-qq")
        run_in(root, "apt-get", "install", "-y", "-qq", "--download-only",
               "--no-install-recommends", *DEPENDS)
        partial = tarball(suite) + ".part"
        subprocess.run(["tar", "--zstd", "-cf", partial, "-C", root, "."], check=True)
        os.replace(partial, tarball(suite))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def unpacked(suite):
    """Yield a fresh root unpacked from the suite's cached tarball (built if missing)."""
    if not os.path.exists(tarball(suite)):
        build(suite)
    work = tempfile.mkdtemp(prefix="xeq-%s." % suite, dir="/var/tmp")
    try:
        subprocess.run(["tar", "--zstd", "-xf", tarball(suite), "-C", work], check=True)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        if not os.path.exists(tarball(name)):
            build(name)
        print(tarball(name))
