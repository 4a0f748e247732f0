"""The dom0 package xe-quiesce-host (`make rpm-host`): files, scriptlets, dependencies,
rpmlint, and its command and XAPI plugin running from the unpacked payload alone."""
import os
import re
import subprocess
import tempfile
import xmlrpc.client

import pytest

from .conftest import REPO, _built

HOST_PKG = "xe-quiesce-host"
SHARE = "/usr/share/xe-quiesce-host"
SYS_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


# XCP-ng's dist tags; dom0's python3 is 3.6 on both.
HOST_DISTS = ["xcpng8.2", "xcpng8.3"]


@pytest.fixture(scope="module", params=HOST_DISTS)
def host_rpm(request, version):
    return _built("%s-%s-1.%s.noarch.rpm" % (HOST_PKG, version, request.param))[0]


@pytest.fixture(scope="module")
def payload(host_rpm):
    with tempfile.TemporaryDirectory() as root:
        subprocess.run("rpm2cpio '%s' | cpio -idm --quiet" % host_rpm, shell=True, cwd=root,
                       check=True)
        yield root


def rpm_q(path, *args):
    return subprocess.run(["rpm", "-qp"] + list(args) + [path], check=True,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout


def test_files(host_rpm):
    listed = set(rpm_q(host_rpm, "-l").split())
    assert {"/usr/bin/xe-quiesce-host", "/etc/xapi.d/plugins/xe-quiesce",
            SHARE + "/lib/xe_quiesce/host/cli.py", SHARE + "/lib/xe_quiesce/host/plugin.py",
            SHARE + "/lib/pyxs/client.py", SHARE + "/lib/click/core.py",
            SHARE + "/fallback/XenAPI/XenAPI.py", SHARE + "/fallback/XenAPIPlugin.py",
            "/usr/share/doc/xe-quiesce-host-%s/README.md" % rpm_q(host_rpm, "--qf",
                                                                 "%{VERSION}")} <= listed
    # dom0's roles and the shared modules only (the list is tests/test_layers.py's)
    ours = {p[len(SHARE + "/lib/"):] for p in listed if p.startswith(SHARE + "/lib/xe_quiesce/")}
    assert {p for p in ours if not p.startswith("xe_quiesce/host/") and p.endswith(".py")} == {
        "xe_quiesce/%s.py" % name for name in ("__init__", "protocol", "xenstore", "errors",
                                               "tls", "https", "access", "entry")}
    # private: nothing in site-packages (no clash with the guest package); the one
    # service is the relay's, installed off
    assert not [p for p in listed if "site-packages" in p or "init.d" in p]
    assert [p for p in listed if "systemd" in p] == [
        "/usr/lib/systemd/system/xe-quiesce-relay.service"]
    modes = dict(line.split() for line in rpm_q(
        host_rpm, "--qf", "[%{FILENAMES} %{FILEMODES:perms}\n]").splitlines())
    assert modes["/etc/xapi.d/plugins/xe-quiesce"] == "-rwxr-xr-x"
    assert modes["/usr/bin/xe-quiesce-host"] == "-rwxr-xr-x"


def test_noarch_scriptlets_only_for_the_relay_unit(host_rpm):
    """XAPI finds plugins by name (no toolstack restart); the scriptlets only reload
    systemd, never enable the relay, and stop it at removal."""
    assert rpm_q(host_rpm, "--qf", "%{ARCH}") == "noarch"
    scripts = rpm_q(host_rpm, "--scripts")
    commands = re.findall(r"/usr/bin/systemctl ([a-z -]+?) ?(?:xe-quiesce-relay\.service|>)",
                          scripts)
    assert commands == ["daemon-reload", "--no-reload disable --now", "try-restart"], scripts
    assert "xapi" not in scripts and "enable " not in scripts.replace("disable ", "")


def test_requires_only_python3_xapi_and_sh(host_rpm):
    requires = {line.split()[0] for line in rpm_q(host_rpm, "--requires").splitlines()
                if not line.startswith("rpmlib(")}
    # /bin/sh: the relay unit's scriptlets
    assert requires == {"/bin/sh", "/usr/bin/python3", "python3", "python(abi)", "xapi-core"}
    assert "python(abi) = 3.6" in rpm_q(host_rpm, "--requires")
    provides = rpm_q(host_rpm, "--provides")
    for bundled in ("python3-pyxs) = 0.4.1", "python3-click) = 7.1.2",
                    "python3-XenAPI) = 26.21.1"):
        assert "bundled(" + bundled in provides


def test_rpmlint_clean(host_rpm):
    # Filters, each with its reason, are in rpm/xe-quiesce-host.rpmlint.toml.
    proc = subprocess.run(["rpmlint", "-c", "rpm/xe-quiesce-host.rpmlint.toml",
                           "rpm/xe-quiesce-host.spec", host_rpm], cwd=REPO, env=SYS_ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0 and re.search(r"\b0 errors, 0 warnings\b", proc.stdout), \
        proc.stdout


def test_payload_grammar_fits_dom0_python_3_6(payload):
    """vermin over the exact payload (ours and what is bundled), for dom0's Python 3.6."""
    files = [os.path.join(d, name) for d, _, names in os.walk(payload) for name in names
             if name.endswith(".py")]
    files += [os.path.join(payload, "usr/bin/xe-quiesce-host"),
              os.path.join(payload, "etc/xapi.d/plugins/xe-quiesce")]
    proc = subprocess.run([os.path.join(REPO, ".venv/bin/vermin"), "--no-tips", "--violations",
                           "--target=3.6-", "--eval-annotations"] + files,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stdout


def relocated(payload, path):
    """The payload's script with its private paths pointing into the payload."""
    with open(os.path.join(payload, path.lstrip("/"))) as handle:
        text = handle.read()
    assert text.startswith("#!/usr/bin/python3")
    assert 'sys.path.insert(0, "%s/lib")' % SHARE in text
    assert 'sys.path.append("%s/fallback")' % SHARE in text
    script = os.path.join(payload, os.path.basename(path) + ".relocated")
    with open(script, "w") as handle:
        handle.write(text.replace(SHARE, payload + SHARE))
    return script


def test_command_runs_from_the_payload_alone(payload):
    """Isolated system Python (-I): click, pyxs and XenAPI all come from the package."""
    script = relocated(payload, "/usr/bin/xe-quiesce-host")
    out = subprocess.run(["/usr/bin/python3", "-I", script, "snapshot", "--help"],
                         env=SYS_ENV, check=True, stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    assert "--fallback [crash-consistent]" in out
    probe = ("import sys; sys.path.insert(0, %r); sys.path.append(%r); import click, pyxs, "
             "XenAPI, XenAPIPlugin; print(click.__version__, pyxs.__file__, XenAPI.__file__)"
             % (payload + SHARE + "/lib", payload + SHARE + "/fallback"))
    version, pyxs, xenapi = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", probe], env=SYS_ENV, check=True,
        stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
    assert version == "7.1.2"
    assert pyxs.startswith(payload + SHARE + "/lib/pyxs/")
    assert xenapi.startswith(payload + SHARE + "/fallback/XenAPI/")


def test_plugin_loads_and_dispatches_from_the_payload(payload):
    """Run as XAPI runs it: the call in argv[1], an XML-RPC answer on stdout."""
    script = relocated(payload, "/etc/xapi.d/plugins/xe-quiesce")
    call = xmlrpc.client.dumps(("OpaqueRef:session", {"vm": "x"}), "no-such-function")
    out = subprocess.run(["/usr/bin/python3", "-I", script, call], env=SYS_ENV, check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    (answer,), _ = xmlrpc.client.loads(out)
    assert answer == {"Status": "Failure",
                      "ErrorDescription": ["UNKNOWN_XENAPI_PLUGIN_FUNCTION", "no-such-function"]}
