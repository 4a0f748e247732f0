"""Shared fixtures: loop filesystems, test configurations, the CLI as a subprocess."""
import os
import subprocess
import sys

import pytest

from testbed.loopfs import LoopFs
from xe_quiesce.config import load_config

if os.path.exists(os.path.join(os.path.dirname(__file__), "rig", "fixtures.py")):
    pytest_plugins = ["tests.rig.fixtures"]


def pytest_collection_modifyitems(items):
    """Tests that need root are run by CI as root; elsewhere they skip, visibly."""
    if os.geteuid() == 0:
        return
    for item in items:
        if "loopfs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason="needs root for loop devices"))


@pytest.fixture
def loopfs(tmp_path):
    """Factory: loopfs("ext4") -> a mounted LoopFs, destroyed (thawed first) at teardown."""
    created = []

    def make(fstype, name=None, mount_point=None, workdir=None):
        fs = LoopFs(str(workdir or tmp_path), fstype, name=name, mount_point=mount_point)
        created.append(fs)
        return fs.create()

    yield make
    for fs in reversed(created):
        fs.destroy()


@pytest.fixture
def write_config(tmp_path):
    """Factory: a config file freezing exactly `mounts`, with a private run dir."""
    def write(mounts, max_frozen=10, extra=""):
        run_dir = tmp_path / "run"
        path = tmp_path / "xe-quiesce.conf"
        path.write_text(
            "[freeze]\nmounts = {}\nmax-frozen = {}\n{}\n[state]\nrun-dir = {}\n".format(
                " ".join(mounts), max_frozen, extra, run_dir))
        return str(path)
    return write


@pytest.fixture
def config_for(write_config):
    def make(mounts, **kwargs):
        return load_config(write_config(mounts, **kwargs))
    return make


@pytest.fixture
def xe_quiesce():
    """Run the CLI as a separate process, as an admin or a backup script would."""
    def run(*args, **kwargs):
        return subprocess.run(
            [sys.executable, "-m", "xe_quiesce.cli"] + list(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            timeout=kwargs.pop("timeout", 60), **kwargs)
    return run


@pytest.fixture
def xo(xenstored, loopfs, write_config, tmp_path):
    """The real daemon with its XO sync hook on, over the test xenstored and two loop
    filesystems (tests/triggers/test_xo_and_control.XoRig); stopped at teardown."""
    from tests.triggers.test_xo_and_control import XoRig

    rig = XoRig(xenstored, loopfs, write_config, tmp_path)
    yield rig
    rig.stop()
