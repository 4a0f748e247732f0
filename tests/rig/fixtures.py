"""pytest fixtures for the xenstore rig: real xenstored, oxenstored, the xenbus emulator.

Loaded from tests/conftest.py with ``pytest_plugins = ["tests.rig.fixtures"]``.
When a test fails, the trace of every xenstored it used is copied to
``artifacts/xenstored/<test>.trace`` (at that moment, so a module-scoped daemon's
trace covers the tests up to the failure).
"""
import os
import re
import shutil

import pytest

from testbed.xenstored import Xenstored, missing
from tests.rig.xenbus_emulator import XenbusEmulator


def _daemon(flavour):
    reason = missing(flavour)
    if reason:
        if flavour == "ocaml" and os.geteuid() != 0:
            pytest.skip(reason)
        pytest.fail(reason)  # an installation problem: `make apt` fixes it
    daemon = Xenstored()
    daemon.start(flavour=flavour)
    return daemon


@pytest.fixture
def xenstored():
    """A fresh C xenstored (about 15 ms to start) for one test."""
    daemon = _daemon("c")
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="module")
def xenstored_module():
    """One C xenstored shared by a module's tests (they must not depend on a clean store)."""
    daemon = _daemon("c")
    yield daemon
    daemon.cleanup()


@pytest.fixture
def oxenstored():
    """A fresh oxenstored (XenServer's daemon) for one test; root only."""
    daemon = _daemon("ocaml")
    yield daemon
    daemon.cleanup()


@pytest.fixture
def xenbus_emulator(xenstored):
    """Factory: ``xenbus_emulator(zero_watch_ids=True, ...)`` -> a started emulator
    in front of this test's C xenstored, stopped at teardown."""
    started = []

    def make(**quirks):
        workdir = os.path.join(xenstored.workdir, f"xenbus{len(started)}")
        os.makedirs(workdir)
        emulator = XenbusEmulator(xenstored.socket_path, workdir, **quirks).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    daemons = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Xenstored)]
    if not daemons:
        return
    folder = os.path.join(str(item.config.rootpath), "artifacts", "xenstored")
    os.makedirs(folder, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)
    for index, daemon in enumerate(daemons):
        if daemon.workdir and os.path.exists(daemon.trace_path):
            suffix = f"-{index}" if len(daemons) > 1 else ""
            shutil.copyfile(daemon.trace_path,
                            os.path.join(folder, f"{name}{suffix}.trace"))
