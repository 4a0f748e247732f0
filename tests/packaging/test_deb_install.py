"""The built .deb in real Debian 11 (bullseye) and 13 (trixie) chroots.

apt resolves and installs our dependencies (from the cached archives, see chroots.py);
the commands run inside; maintainer scripts enable the unit and the init script; purge
removes everything we put there.  Tests run in file order per suite: purge is last.
"""
import json
import os
import shutil
import subprocess

import pytest

from . import chroots
from .conftest import PKG_NAME

SUITES = ["bullseye", "trixie"]
UNIT_DIRS = ["lib/systemd/system", "usr/lib/systemd/system"]
TOOLS_UNITS = ["xe-linux-distribution.service", "xe-daemon.service",
               "xen-guest-agent.service"]


class Root(str):
    """The chroot's path, with what the package's install printed."""

    def __new__(cls, path, install_output):
        self = str.__new__(cls, path)
        self.install_output = install_output
        return self


@pytest.fixture(scope="module", params=SUITES)
def root(request, deb):
    with chroots.unpacked(request.param) as path:
        shutil.copy(deb, os.path.join(path, "tmp", os.path.basename(deb)))
        install = chroots.run_in(path, "apt-get", "install", "-y", "-q",
                                 "--no-install-recommends", "/tmp/" + os.path.basename(deb))
        yield Root(path, install.stdout)


def exists(root, relpath):
    return os.path.lexists(os.path.join(root, relpath))


def test_installed_with_dependencies(root):
    out = chroots.run_in(root, "dpkg-query", "-W", "-f", "${Package} ${Status}\\n",
                         PKG_NAME, "python3-pyxs", "python3-psutil", "python3-click").stdout
    assert sorted(out.split("\n")[:-1]) == sorted(
        "%s install ok installed" % name
        for name in [PKG_NAME, "python3-pyxs", "python3-psutil", "python3-click"])


def test_ships_only_the_guest_modules(root):
    """dom0's roles (xe_quiesce/host, xe-quiesce-host) are the host RPM's, not the guest's."""
    listed = chroots.run_in(root, "dpkg-query", "-L", PKG_NAME).stdout.split()
    assert [p for p in listed if p.endswith("/xe_quiesce/core/session.py")]
    assert not [p for p in listed if "/xe_quiesce/host" in p or p.endswith("xe-quiesce-host")]
    # the testbed, the tests and the bench are the source tree's (setup.cfg lists packages)
    assert not [p for p in listed if any("-packages/{}/".format(top) in p
                                         for top in ("testbed", "tests", "bench"))]


def test_version_runs(root, version):
    assert chroots.run_in(root, "xe-quiesce", "--version").stdout.strip().endswith(version)


def test_plan_is_empty_outside_xen(root):
    plan = json.loads(chroots.run_in(root, "xe-quiesce", "plan", "--json").stdout)
    assert plan["filesystems"] == []


def test_status_runs(root):
    status = json.loads(chroots.run_in(root, "xe-quiesce", "status", "--json").stdout)
    assert status["active"] is None


def test_config_is_a_conffile(root):
    out = chroots.run_in(root, "dpkg-query", "-W", "-f", "${Conffiles}", PKG_NAME).stdout
    assert "/etc/xe-quiesce/xe-quiesce.conf" in out
    assert os.path.isdir(os.path.join(root, "etc/xe-quiesce/hooks.d"))


def test_install_prints_no_warning_about_missing_units(root):
    """The install in the fixture ran apt; its output must not name a non-existent unit
    (what WantedBy= on the guest tools' units used to print, three times)."""
    assert "non-existent unit" not in root.install_output, root.install_output


def test_unit_enabled_for_multi_user_and_pulled_in_by_the_guest_tools(root):
    link = os.path.join(root, "etc/systemd/system/multi-user.target.wants/xe-quiesce.service")
    assert os.path.islink(link), link
    assert os.readlink(link).endswith("/systemd/system/xe-quiesce.service")
    assert exists(root, os.readlink(link).lstrip("/"))
    unit_dir = os.path.dirname(os.readlink(link)).lstrip("/")
    for unit in TOOLS_UNITS:
        assert not exists(root, os.path.join("etc/systemd/system", unit + ".wants"))
        with open(os.path.join(root, unit_dir, unit + ".d", "xe-quiesce.conf")) as fh:
            assert "Wants=xe-quiesce.service\nBefore=xe-quiesce.service\n" in fh.read()


def test_systemd_analyze_verifies_a_guest_tools_unit_with_our_drop_in(root):
    """A stand-in xe-daemon.service in the root: with our drop-in it still verifies, and
    nothing is said about the drop-in (its keys are valid [Unit] settings)."""
    unit_dir = next(d for d in UNIT_DIRS if exists(root, os.path.join(d, "xe-quiesce.service")))
    stand_in = os.path.join(root, unit_dir, "xe-daemon.service")
    with open(stand_in, "w") as fh:
        fh.write("[Service]\nExecStart=/bin/true\n")
    try:
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", "--root=" + root,
                               "xe-daemon.service"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)
    finally:
        os.remove(stand_in)
    assert proc.returncode == 0, proc.stdout
    assert [line for line in proc.stdout.splitlines() if "xe-quiesce" in line] == []


def test_sysvinit_script_enabled(root):
    assert os.access(os.path.join(root, "etc/init.d/xe-quiesce"), os.X_OK)
    assert [name for name in os.listdir(os.path.join(root, "etc/rc2.d"))
            if name.startswith("S") and name.endswith("xe-quiesce")]
    assert [name for name in os.listdir(os.path.join(root, "etc/rc0.d"))
            if name.startswith("K") and name.endswith("xe-quiesce")]


def test_systemd_analyze_verify_root(root):
    """This machine's systemd-analyze on the chroot. A newer distro's own units draw
    notes about keys this systemd does not know; only lines about ours count."""
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", "--root=" + root,
                           "xe-quiesce.service"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
    assert [line for line in proc.stdout.splitlines() if "xe-quiesce" in line] == []


def test_man_page_and_completion_installed(root):
    assert exists(root, "usr/share/man/man8/xe-quiesce.8.gz")
    assert exists(root, "usr/share/bash-completion/completions/xe-quiesce")


def test_init_script_is_quiet_outside_xen(root):
    start = chroots.run_in(root, "/etc/init.d/xe-quiesce", "start", check=False)
    assert (start.returncode, start.stdout) == (0, "")
    status = chroots.run_in(root, "/etc/init.d/xe-quiesce", "status", check=False)
    assert (status.returncode, status.stdout) == (3, "")


# A Xen guest as the init script sees it (/sys is not mounted in the chroot), and, as
# no xenstore exists here, a stand-in for `xe-quiesce run` that just stays up.
STAND_IN = "#!/bin/sh\nwhile :; do sleep 1; done\n"
LIFECYCLE = """
set -e
s=/etc/init.d/xe-quiesce
$s start
$s status
pid=$(cat /run/xe-quiesce/xe-quiesce.pid)
$s start
[ "$(cat /run/xe-quiesce/xe-quiesce.pid)" = "$pid" ]
$s restart
[ "$(cat /run/xe-quiesce/xe-quiesce.pid)" != "$pid" ]
$s stop
! kill -0 "$pid" 2>/dev/null
[ ! -e /run/xe-quiesce/xe-quiesce.pid ]
rc=0; $s status || rc=$?
[ "$rc" = 3 ]
"""


@pytest.mark.parametrize("launcher", ["start-stop-daemon", "setsid"])
def test_init_script_lifecycle_in_a_xen_guest(root, launcher):
    """start/status/restart/stop with the pid file, via Debian's start-stop-daemon and
    via the RHEL-style fallback (start-stop-daemon moved out of the way)."""
    binary = os.path.join(root, "usr/bin/xe-quiesce")
    hypervisor = os.path.join(root, "sys/hypervisor")
    xenbus = os.path.join(root, "dev/xen/xenbus")
    ssd = chroots.run_in(root, "sh", "-c", "command -v start-stop-daemon").stdout.strip()
    shutil.copy2(binary, binary + ".real")
    try:
        with open(binary, "w") as fh:
            fh.write(STAND_IN)
        os.makedirs(hypervisor)
        with open(os.path.join(hypervisor, "type"), "w") as fh:
            fh.write("xen\n")
        os.makedirs(os.path.dirname(xenbus))
        open(xenbus, "w").close()
        if launcher == "setsid":
            os.rename(root + ssd, root + ssd + ".off")
        out = chroots.run_in(root, "sh", "-c", LIFECYCLE).stdout
        assert "xe-quiesce is running (pid" in out
    finally:
        if os.path.exists(root + ssd + ".off"):
            os.rename(root + ssd + ".off", root + ssd)
        shutil.rmtree(hypervisor, ignore_errors=True)
        shutil.rmtree(os.path.dirname(xenbus), ignore_errors=True)
        os.replace(binary + ".real", binary)


def test_init_script_in_a_xen_guest_without_xenbus_says_so_and_does_not_start(root):
    """An HVM guest without PV drivers: one line, no failed start, nothing running."""
    hypervisor = os.path.join(root, "sys/hypervisor")
    os.makedirs(hypervisor)
    try:
        with open(os.path.join(hypervisor, "type"), "w") as fh:
            fh.write("xen\n")
        start = chroots.run_in(root, "/etc/init.d/xe-quiesce", "start", check=False)
        status = chroots.run_in(root, "/etc/init.d/xe-quiesce", "status", check=False)
    finally:
        shutil.rmtree(hypervisor, ignore_errors=True)
    assert (start.returncode, start.stdout) == (
        0, "xe-quiesce: no xenbus device (/dev/xen/xenbus, /proc/xen/xenbus): not starting\n")
    assert status.returncode == 3


def test_remove_keeps_config_then_purge_removes_everything(root):
    # What the agent generates at run time (the XO hook's TLS pair, the journal).
    os.makedirs(os.path.join(root, "etc/xe-quiesce/tls"))
    open(os.path.join(root, "etc/xe-quiesce/tls/key.pem"), "w").close()
    os.makedirs(os.path.join(root, "run/xe-quiesce"), exist_ok=True)

    chroots.run_in(root, "apt-get", "remove", "-y", "-q", PKG_NAME)
    assert not exists(root, "usr/bin/xe-quiesce")
    assert exists(root, "etc/xe-quiesce/xe-quiesce.conf")

    chroots.run_in(root, "apt-get", "purge", "-y", "-q", PKG_NAME)
    left = ["etc/xe-quiesce", "etc/init.d/xe-quiesce", "run/xe-quiesce",
            "var/lib/systemd/deb-systemd-helper-enabled/xe-quiesce.service.dsh-also",
            "usr/share/man/man8/xe-quiesce.8.gz", "usr/lib/python3/dist-packages/xe_quiesce"]
    left += [os.path.join(d, "xe-quiesce.service") for d in UNIT_DIRS]
    left += [os.path.join(d, unit + ".d") for d in UNIT_DIRS for unit in TOOLS_UNITS]
    left += ["etc/systemd/system/multi-user.target.wants/xe-quiesce.service"]
    left += [os.path.join("etc", rc, name) for rc in os.listdir(os.path.join(root, "etc"))
             if rc.startswith("rc") and rc.endswith(".d")
             for name in os.listdir(os.path.join(root, "etc", rc)) if "xe-quiesce" in name]
    assert [path for path in left if exists(root, path)] == []
