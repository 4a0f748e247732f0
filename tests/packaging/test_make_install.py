"""`make install DESTDIR=...` for distros without our packages (Alpine, Arch, Gentoo)."""
import os
import subprocess
import tempfile

import pytest

from .conftest import REPO


@pytest.mark.parametrize("init_script", ["sysvinit", "openrc"])
def test_make_install_into_destdir(init_script):
    with tempfile.TemporaryDirectory() as dest:
        subprocess.run(["make", "-s", "install", "DESTDIR=" + dest, "PYTHON=/usr/bin/python3",
                        "INIT_SCRIPT=" + init_script], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
        installed = {os.path.relpath(os.path.join(d, f), dest)
                     for d, _, names in os.walk(dest) for f in names}
        scripts = [p for p in installed if p.endswith("bin/xe-quiesce")]
        assert len(scripts) == 1
        assert [p for p in installed if p.endswith("/xe_quiesce/cli/main.py")]
        assert {"etc/xe-quiesce/xe-quiesce.conf", "etc/init.d/xe-quiesce",
                "usr/lib/systemd/system/xe-quiesce.service", "usr/share/man/man8/xe-quiesce.8",
                "usr/share/bash-completion/completions/xe-quiesce"} <= installed
        assert {"usr/lib/systemd/system/%s.d/xe-quiesce.conf" % unit for unit in [
            "xe-linux-distribution.service", "xe-daemon.service", "xen-guest-agent.service"]} \
            <= installed
        assert os.path.isdir(os.path.join(dest, "etc/xe-quiesce/hooks.d"))
        # Unit and init script start the command where pip put it.
        with open(os.path.join(dest, "usr/lib/systemd/system/xe-quiesce.service")) as fh:
            assert "ExecStart=/%s run" % scripts[0] in fh.read()
        with open(os.path.join(dest, "etc/init.d/xe-quiesce")) as fh:
            script = fh.read()
        assert "/" + scripts[0] in script
        assert script.startswith("#!/sbin/openrc-run" if init_script == "openrc" else "#!/bin/sh")
