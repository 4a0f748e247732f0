"""The built .rpm files: file lists, config flags, scriptlets, dependencies, bundling.

Nothing can install them here (Debian host), so this checks what rpm would do from
the headers and payload: `rpm -qlp`, `rpm -qp --scripts` and friends.
"""
import os
import subprocess
import tempfile

import pytest


def rpm_q(path, *args):
    return subprocess.run(["rpm", "-qp"] + list(args) + [path], check=True,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout


def files(path):
    return set(rpm_q(path, "-l").split())


@pytest.fixture(scope="module")
def payload(rpm_systemd):
    """The systemd package's payload, unpacked."""
    with tempfile.TemporaryDirectory() as root:
        subprocess.run("rpm2cpio '%s' | cpio -idm --quiet" % rpm_systemd, shell=True,
                       cwd=root, check=True)
        yield root


TOOLS_UNITS = ["xe-linux-distribution.service", "xe-daemon.service", "xen-guest-agent.service"]
COMMON = {
    "/usr/bin/xe-quiesce",
    "/etc/xe-quiesce/xe-quiesce.conf",
    "/etc/xe-quiesce/hooks.d",
    "/usr/share/man/man8/xe-quiesce.8.gz",
    "/usr/share/bash-completion/completions/xe-quiesce",
    "/usr/share/xe-guest-utilities-quiesce/vendor/pyxs/__init__.py",
    "/usr/share/xe-guest-utilities-quiesce/vendor/pyxs/client.py",
}


def test_systemd_package_files(rpm_systemd):
    listed = files(rpm_systemd)
    assert COMMON | {"/usr/lib/systemd/system/xe-quiesce.service",
                     "/usr/lib/systemd/system-preset/90-xe-quiesce.preset"} <= listed
    assert {"/usr/lib/systemd/system/%s.d/xe-quiesce.conf" % unit for unit in TOOLS_UNITS} \
        <= listed
    assert any(p.endswith("/site-packages/xe_quiesce/cli/main.py") for p in listed)
    assert not [p for p in listed if "/xe_quiesce/host" in p or p.endswith("xe-quiesce-host")]
    assert not [p for p in listed if "init.d" in p]


def test_sysvinit_package_files(rpm_sysv):
    listed = files(rpm_sysv)
    assert COMMON <= listed
    assert [p for p in listed if p.endswith("init.d/xe-quiesce")]
    assert not [p for p in listed if "systemd" in p]


def test_config_is_noreplace(rpm_systemd):
    flags = dict(line.split(" ", 1) for line in rpm_q(
        rpm_systemd, "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines())
    assert set(flags["/etc/xe-quiesce/xe-quiesce.conf"]) >= {"c", "n"}


def test_systemd_scriptlets(rpm_systemd):
    scripts = rpm_q(rpm_systemd, "--scripts")
    post, rest = scripts.split("preuninstall scriptlet")
    preun, postun = rest.split("postuninstall scriptlet")
    assert "preset xe-quiesce.service" in post and "$1 -eq 1" in post
    assert "disable --now xe-quiesce.service" in preun and "$1 -eq 0" in preun
    assert "try-restart xe-quiesce.service" in postun and "$1 -ge 1" in postun
    assert "chkconfig" not in scripts


def test_preset_enables_the_unit(payload):
    with open(os.path.join(payload, "usr/lib/systemd/system-preset/90-xe-quiesce.preset")) as fh:
        assert fh.read().split() == ["enable", "xe-quiesce.service"]


def test_systemctl_preset_enables_it_for_multi_user_only(payload):
    """What %systemd_post runs on install, here with systemctl --root on the payload:
    one link, under multi-user.target; the guest tools pull the unit in by drop-ins."""
    proc = subprocess.run(["systemctl", "--root=" + payload, "preset", "xe-quiesce.service"],
                          check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    # The bare payload has no multi-user.target (a real system has); no other unit named.
    assert [line for line in proc.stdout.splitlines() if "non-existent" in line
            and not line.endswith("non-existent unit multi-user.target.")] == [], proc.stdout
    links = [os.path.join(d, name) for d, _, names in
             os.walk(os.path.join(payload, "etc/systemd")) for name in names]
    assert links == [os.path.join(payload, "etc/systemd/system/multi-user.target.wants",
                                  "xe-quiesce.service")]


def test_guest_tools_drop_ins_pull_the_unit_in(payload):
    for unit in TOOLS_UNITS:
        path = os.path.join(payload, "usr/lib/systemd/system", unit + ".d", "xe-quiesce.conf")
        with open(path) as fh:
            lines = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
        assert lines == ["[Unit]", "Wants=xe-quiesce.service", "Before=xe-quiesce.service"]


def test_sysvinit_scriptlets(rpm_sysv):
    scripts = rpm_q(rpm_sysv, "--scripts")
    post, rest = scripts.split("preuninstall scriptlet")
    preun, postun = rest.split("postuninstall scriptlet")
    assert "chkconfig --add xe-quiesce" in post
    assert "service xe-quiesce stop" in preun and "chkconfig --del xe-quiesce" in preun
    assert "service xe-quiesce restart" in postun
    assert "systemctl" not in scripts


@pytest.mark.parametrize("which", ["rpm_systemd", "rpm_sysv"])
def test_pyxs_bundled_not_required(request, which):
    path = request.getfixturevalue(which)
    requires = rpm_q(path, "--requires")
    assert "pyxs" not in requires
    assert "bundled(python3-pyxs) = 0.4.1" in rpm_q(path, "--provides")


def test_command_loads_the_bundled_pyxs(payload):
    """Our wrapper puts the private directory first: pyxs then comes from there."""
    with open(os.path.join(payload, "usr/bin/xe-quiesce")) as fh:
        wrapper = fh.read()
    vendor = "/usr/share/xe-guest-utilities-quiesce/vendor"
    assert 'sys.path.insert(0, "%s")' % vendor in wrapper
    probe = ("import sys; sys.path.insert(0, %r); import pyxs; print(pyxs.__file__)"
             % (payload + vendor))
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", probe], check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    assert out.startswith(payload + vendor + "/pyxs/")
