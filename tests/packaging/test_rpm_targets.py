"""One RPM per target, each for that target's own Python, and the source RPM.

- `rpm -qp --requires` of every package against its target's list (rpm/…spec says where
  each name comes from);
- the EL 9 package installed with rpm into a Debian bullseye root (Python 3.9, EL 9's
  minor version) with its declared dependencies satisfied there, then --version, plan
  and a freeze/thaw of a loop filesystem, all from that root; the Fedora 42 package the
  same way in trixie (Python 3.13, Fedora 42's);
- EL 10's Python (3.12) and EL 8's (3.6) cannot be had here: EL 10's payload runs on
  trixie's 3.13 (bundled click included), and both get vermin's grammar check for their
  Python on the exact payload;
- the .src.rpm rebuilt with `rpmbuild --rebuild` gives the same EL 9 package.
"""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from testbed.loopfs import LoopFs

from . import chroots
from .conftest import PKG_NAME, REPO, target_rpm

SYS_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
# What each package must require, beyond /bin/sh (scriptlets), config() and rpmlib().
TARGETS = {
    "el8": {"python": "3.6", "requires": {"python(abi) = 3.6", "/usr/libexec/platform-python",
                                          "python3-click", "python3-psutil"}},
    "el9": {"python": "3.9", "requires": {"python(abi) = 3.9", "/usr/bin/python3",
                                          "python3-psutil"}},
    "el10": {"python": "3.12", "requires": {"python(abi) = 3.12", "/usr/bin/python3",
                                            "python3-psutil"}},
    "fc42": {"python": "3.13", "requires": {"python(abi) = 3.13", "/usr/bin/python3",
                                            "python3-click", "python3-psutil"}},
    "fc43": {"python": "3.14", "requires": {"python(abi) = 3.14", "/usr/bin/python3",
                                            "python3-click", "python3-psutil"}},
}
BUNDLED_CLICK = {"el9", "el10"}
# Debian roots standing in for a target: same Python minor version where one exists.
ROOTS = {"el9": ("bullseye", True), "fc42": ("trixie", True), "el10": ("trixie", False)}
# The Debian package that provides what the RPM requires by name.
DEBIAN_NAMES = {"python3-psutil": "python3-psutil", "python3-click": "python3-click"}
VENDOR = "/usr/share/xe-guest-utilities-quiesce/vendor"


def rpm_q(path, *args):
    return subprocess.run(["rpm", "-qp"] + list(args) + [path], check=True, env=SYS_ENV,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout


def requires(path):
    return {line.strip() for line in rpm_q(path, "--requires").splitlines()
            if not line.startswith(("rpmlib(", "config(")) and line.strip() != "/bin/sh"}


@pytest.mark.parametrize("dist", sorted(TARGETS))
def test_requires_are_the_targets(version, dist):
    assert requires(target_rpm(version, dist)) == TARGETS[dist]["requires"]


@pytest.mark.parametrize("dist", sorted(TARGETS))
def test_payload_in_the_targets_site_packages(version, dist):
    path = target_rpm(version, dist)
    assert os.path.basename(path) == "%s-%s-1.%s.noarch.rpm" % (PKG_NAME, version, dist)
    listed = set(rpm_q(path, "-l").split())
    sitelib = "/usr/lib/python%s/site-packages" % TARGETS[dist]["python"]
    assert sitelib + "/xe_quiesce/cli/main.py" in listed
    assert not [p for p in listed if "/xe_quiesce/host" in p]  # dom0's: xe-quiesce-host.spec
    assert not [p for p in listed if "/python3" in p and not p.startswith(sitelib)]
    assert (VENDOR + "/click/core.py" in listed) == (dist in BUNDLED_CLICK)
    provides = rpm_q(path, "--provides")
    assert ("bundled(python3-click) = 7.1.2" in provides) == (dist in BUNDLED_CLICK)


@pytest.fixture(scope="module")
def payloads(version):
    """Each target's payload, unpacked once."""
    work = tempfile.mkdtemp(prefix="xeq-rpm-payloads.", dir="/var/tmp")
    try:
        out = {}
        for dist in TARGETS:
            out[dist] = os.path.join(work, dist)
            os.makedirs(out[dist])
            subprocess.run("rpm2cpio '%s' | cpio -idm --quiet" % target_rpm(version, dist),
                           shell=True, cwd=out[dist], check=True)
        yield out
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("dist", ["el8", "el10"])
def test_payload_grammar_fits_the_targets_python(payloads, dist):
    """vermin over every Python file of the package (ours, the wrapper, what is bundled):
    nothing needs a newer Python than the target's."""
    root = payloads[dist]
    files = [os.path.join(d, name) for d, _, names in os.walk(root) for name in names
             if name.endswith(".py")] + [os.path.join(root, "usr/bin/xe-quiesce")]
    assert len(files) > 30
    proc = subprocess.run([os.path.join(REPO, ".venv/bin/vermin"), "--no-tips", "--violations",
                           "--target=%s-" % TARGETS[dist]["python"], "--eval-annotations"]
                          + files, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def test_el8_command_runs_with_platform_python(payloads):
    with open(os.path.join(payloads["el8"], "usr/bin/xe-quiesce")) as fh:
        assert fh.readline() == "#!/usr/libexec/platform-python -s\n"


def satisfied_in(root, requirement, abi_matches):
    """Whether the Debian root provides what the RPM requires (rpm's own database there is
    empty, so each kind of requirement is looked up where Debian keeps it)."""
    match = re.match(r"python\(abi\) = (\S+)$", requirement)
    if match:
        out = chroots.run_in(root, "python3", "-c", "import sys; print('%d.%d' % "
                             "sys.version_info[:2])").stdout.strip()
        return out == match.group(1) or not abi_matches
    if requirement.startswith("/"):
        return os.path.exists(os.path.join(root, requirement.lstrip("/")))
    status = chroots.run_in(root, "dpkg-query", "-W", "-f", "${Status}",
                            DEBIAN_NAMES[requirement], check=False).stdout
    return status == "install ok installed"


CONFIG = "[freeze]\nmounts = /mnt/loop\nmax-frozen = 30\n"
SESSION = """
set -e
xe-quiesce --version
xe-quiesce plan --config /tmp/xe-quiesce.conf
xe-quiesce freeze --config /tmp/xe-quiesce.conf
# The kernel's word that it is frozen: a second FIFREEZE is refused with EBUSY.
if fsfreeze --freeze /mnt/loop 2>/tmp/second-freeze.err; then exit 7; fi
grep -q 'busy' /tmp/second-freeze.err && echo "second FIFREEZE: busy"
xe-quiesce thaw --config /tmp/xe-quiesce.conf
# Thawed: a write goes through.
touch /mnt/loop/after-thaw && echo "written after thaw"
"""


@pytest.mark.parametrize("dist", sorted(ROOTS))
def test_installed_with_rpm_into_a_root_with_the_targets_python(version, dist, tmp_path):
    suite, abi_matches = ROOTS[dist]
    package = target_rpm(version, dist)
    needed = TARGETS[dist]["requires"]
    with chroots.unpacked(suite) as root:
        names = sorted(DEBIAN_NAMES[r] for r in needed if r in DEBIAN_NAMES)
        chroots.run_in(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *names)
        assert [r for r in sorted(needed) if not satisfied_in(root, r, abi_matches)] == []
        # EL's and Fedora's python3 have site-packages on sys.path, Debian's only
        # dist-packages: this .pth gives the stand-in root the target's layout.
        sitelib = "/usr/lib/python%s/site-packages" % TARGETS[dist]["python"]
        with open(os.path.join(root, "usr/lib/python3/dist-packages/zz-rpm-site.pth"), "w") as fh:
            fh.write(sitelib + "\n")
        # rpm itself, into the root (its database there is empty: --nodeps, having
        # checked each requirement above); the scriptlets run chrooted.
        subprocess.run(["rpm", "--root", root, "--initdb"], check=True, env=SYS_ENV)
        subprocess.run(["rpm", "--root", root, "-i", "--nodeps", package], check=True,
                       env=SYS_ENV)
        assert os.path.exists(os.path.join(root, sitelib.lstrip("/"), "xe_quiesce/cli/main.py"))
        assert os.path.islink(os.path.join(
            root, "etc/systemd/system/multi-user.target.wants/xe-quiesce.service"))

        fs = LoopFs(str(tmp_path), "ext4", mount_point=os.path.join(root, "mnt/loop"))
        fs.create()
        try:
            with open(os.path.join(root, "tmp/xe-quiesce.conf"), "w") as fh:
                fh.write(CONFIG)
            out = chroots.run_in(root, "sh", "-c", SESSION).stdout
        finally:
            fs.destroy()
        assert out.splitlines()[0] == "xe-quiesce, version %s" % version
        assert re.search(r"^  MOUNT POINT +FSTYPE +VBDS +BLOCK STACK\n  /mnt/loop +ext4 ", out,
                         re.M), out
        assert "\nFrozen: /mnt/loop (session " in out, out
        assert "\nsecond FIFREEZE: busy\n" in out, out
        assert "\nthawed: thawed /mnt/loop\nwritten after thaw\n" in out, out
        assert re.search(r"INFO: session \w+ \(trigger cli\): froze /mnt/loop; .* result thawed",
                         out), out
        imported = chroots.run_in(root, "python3", "-c", "import sys; sys.path.insert(0, %r); "
                                  "import click, xe_quiesce; print(click.__file__); "
                                  "print(xe_quiesce.__file__)" % VENDOR).stdout.split()
        assert imported[1].startswith(sitelib + "/xe_quiesce/")
        assert imported[0].startswith(VENDOR if dist in BUNDLED_CLICK
                                      else "/usr/lib/python3/dist-packages/")


def test_source_rpm_rebuilds_into_the_same_package(version, srpm):
    """`rpmbuild --rebuild` of the .src.rpm, with EL 9's macros as `make rpm` sets them."""
    top = tempfile.mkdtemp(prefix="xeq-rebuild.", dir="/var/tmp")
    try:
        subprocess.run(["rpmbuild", "--rebuild", "--nodeps", "--quiet",
                        "--define", "_topdir " + top, "--define", "dist .el9",
                        "--define", "rhel 9", "--define", "python3_version 3.9",
                        "--define", "build_python3 /usr/bin/python3",
                        "--define", "__brp_compress bash /usr/lib/rpm/brp-compress", srpm],
                       check=True, env=SYS_ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        rebuilt = os.path.join(top, "RPMS/noarch", "%s-%s-1.el9.noarch.rpm" % (PKG_NAME, version))
        built = target_rpm(version, "el9")
        assert requires(rebuilt) == requires(built) == TARGETS["el9"]["requires"]
        assert rpm_q(rebuilt, "-l") == rpm_q(built, "-l")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_source_rpm_carries_every_source(srpm):
    listed = set(rpm_q(srpm, "-l").split())
    assert {"xe-guest-utilities-quiesce.spec", "pyxs-0.4.1.tar.gz", "click-7.1.2.tar.gz"} \
        <= listed
    assert [p for p in listed if re.match(r"xe-guest-utilities-quiesce-[\d.]+\.tar\.gz$", p)]
