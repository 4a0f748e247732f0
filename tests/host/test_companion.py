"""The dom0 companion (`xe-quiesce-host` and the XAPI plugin) end to end.

Real parts: the test rig's xenstored, the guest daemon `xe-quiesce run` as its own
process on loop filesystems, the real `XenAPI` client library (the command's and
this test's), the real XenAPIPlugin module (from the XenAPI sdist on PyPI, which
ships it), the plugin script run as XAPI runs it. Only XAPI itself is the test's
(tests/xapi_server.py), its VM.snapshot copying the loop images. Every case runs
through both front ends: the command as a subprocess, and `host.call_plugin`.
"""
import fcntl
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from importlib import metadata

import pytest
import XenAPI

from testbed import domains
from testbed.guestd import GuestDaemon
from testbed.loopfs import is_frozen
from tests import REPO
from tests.xapi_server import NULL, FakeXapi
from xe_quiesce.xenstore import XenstoreClient

PLUGIN = os.path.join(REPO, "host-plugin", "xe-quiesce")
CACHE = "/var/cache/xe-quiesce/host"
DOMID = 7
DEVIDS = (51712, 51728)
CDROM_DEVID = 5632
SR_FULL = ["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]


@pytest.fixture(scope="session")
def xenapi_plugin_dir():
    """A folder holding XenAPIPlugin.py from the sdist of the installed XenAPI version
    (the wheel leaves it out; dom0 has it from xapi-core)."""
    version = metadata.version("XenAPI")
    folder = os.path.join(CACHE, "xenapi-" + version)
    if not os.path.exists(os.path.join(folder, "XenAPIPlugin.py")):
        with tempfile.TemporaryDirectory() as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            "--no-binary", ":all:", "-d", download, "XenAPI==" + version],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            [sdist] = os.listdir(download)
            with tarfile.open(os.path.join(download, sdist)) as tar:
                member = [m for m in tar.getmembers() if m.name.endswith("/XenAPIPlugin.py")][0]
                data = tar.extractfile(member).read()
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "XenAPIPlugin.py.tmp"), "wb") as handle:
            handle.write(data)
        os.replace(os.path.join(folder, "XenAPIPlugin.py.tmp"),
                   os.path.join(folder, "XenAPIPlugin.py"))
    return folder


class Result(object):
    def __init__(self, ok, value, error, seconds):
        self.ok, self.value, self.error, self.seconds = ok, value, error, seconds


class Host(object):
    """One XAPI host: the test XAPI, this host's xenstored, a guest VM with two loop
    filesystems as disks and an empty CD drive, and (when started) its guest daemon."""

    def __init__(self, xenstored, loopfs, write_config, tmp_path, plugin_dir):
        self.xenstored = xenstored
        self.loopfs = loopfs
        self.write_config = write_config
        self.tmp_path = tmp_path
        self.plugin_dir = plugin_dir
        self.xapi = FakeXapi().start()
        self.client = XenstoreClient(xenstored.uri, timeout=3.0)
        self.client.connect()
        self.inventory = str(tmp_path / "xensource-inventory")
        with open(self.inventory, "w") as handle:
            handle.write("PRODUCT_BRAND='XCP-ng'\nINSTALLATION_UUID='{}'\n".format(
                self.xapi.db["host"][self.xapi.host]["uuid"]))
        self.filesystems = self.mounts = self.vm = self.guestd = None
        self.probes = []
        self.ack_timeout = None

    def make_vm(self, name="guest-vm"):
        """The VM in XAPI and its domain in xenstore, laid out as current xenopsd does:
        without /vss/<uuid> and D/vss (removed in xenopsd 0.129.0)."""
        self.filesystems = [self.loopfs("ext4"), self.loopfs("xfs")]
        self.mounts = [fs.mount_point for fs in self.filesystems]
        self.vm = self.xapi.add_vm(name, domid=str(DOMID))
        self.vdis = []
        for userdevice, fs in enumerate(self.filesystems):
            vbd = self.xapi.add_disk(self.vm, userdevice, fs.image, fs.fstype)
            self.vdis.append(self.xapi.db["VDI"][self.xapi.db["VBD"][vbd]["VDI"]]["uuid"])
        self.xapi.add_disk(self.vm, 3)  # an empty CD drive
        vbds = [domains.Vbd(devid, vdi, "disk") for devid, vdi in zip(DEVIDS, self.vdis)]
        vbds.append(domains.Vbd(CDROM_DEVID, None, "cdrom"))
        self.home, self.vss = domains.build_domain(self.client, DOMID, self.vm_uuid, name, vbds)
        self.client.rm(self.vss)
        self.client.rm(self.home + "/vss")
        self.control = self.home + "/control/snapshot"
        self.xapi.before_snapshot = self.probe
        return self

    @property
    def vm_uuid(self):
        return self.xapi.db["VM"][self.vm]["uuid"]

    def start_guest(self, max_frozen=10):
        config = self.write_config(self.mounts, max_frozen=max_frozen,
                                   extra="[xenstore]\nrequest-timeout = 2")
        args = ["--xenstore", self.xenstored.uri, "--domain-path", self.home]
        self.guestd = GuestDaemon(config, args, str(self.tmp_path / "daemon.log")).start()
        self.wait(lambda: self.read("data/xe-quiesce/state") == "idle", "the guest daemon")
        return self

    def probe(self):
        """In VM.snapshot: is each of the guest's filesystems frozen right now?"""
        self.probes.append([is_frozen(point) for point in self.mounts])

    def frozen_now(self):
        return [is_frozen(point) for point in self.mounts]

    def read(self, key):
        return self.client.read_or(self.home + "/" + key)

    def wait(self, predicate, what, timeout=15.0):
        self.guestd.wait_for(predicate, what, timeout)

    def env(self):
        env = dict(os.environ, XE_QUIESCE_XAPI_URL=self.xapi.url,
                   XE_QUIESCE_XENSTORE=self.xenstored.uri,
                   XE_QUIESCE_INVENTORY=self.inventory,
                   XE_QUIESCE_LOCK_DIR=str(self.tmp_path))
        if self.ack_timeout is not None:
            env["XE_QUIESCE_ACK_TIMEOUT"] = str(self.ack_timeout)
        return env

    def snapshot_records(self):
        return self.xapi.snapshots()

    def stop(self):
        try:
            if self.guestd is not None:
                os.kill(self.guestd.process.pid, signal.SIGCONT)
                self.guestd.stop()
        finally:
            self.client.close()
            self.xapi.stop()


@pytest.fixture
def host(xenstored, loopfs, write_config, tmp_path, xenapi_plugin_dir):
    made = Host(xenstored, loopfs, write_config, tmp_path, xenapi_plugin_dir)
    yield made
    made.stop()


# -- the two front ends ------------------------------------------------------------

def run_cli(host, command, vm, **options):
    """`xe-quiesce-host COMMAND VM --option value` as a separate process."""
    argv = [sys.executable, "-m", "xe_quiesce.host.cli", command, vm]
    for key, value in options.items():
        argv += ["--" + key.replace("_", "-")] + ([] if value is True else [str(value)])
    started = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=host.env(), timeout=120)
    return Result(proc.returncode == 0, proc.stdout.strip(), proc.stderr,
                  time.monotonic() - started)


def run_plugin(host, command, vm, **options):
    """host.call_plugin(this host, "xe-quiesce", COMMAND, {"vm": VM, ...}) through the
    real XenAPI client; the test XAPI runs the plugin script as XAPI does."""
    env = host.env()
    env["PYTHONPATH"] = host.plugin_dir
    host.xapi.plugin = (PLUGIN, env)
    options.pop("json", None)
    args = dict({"vm": vm}, **{key: str(value) for key, value in options.items()})
    session = XenAPI.Session(host.xapi.url)
    session.xenapi.login_with_password("root", "", "1.0", "test_host_companion")
    started = time.monotonic()
    try:
        value = session.xenapi.host.call_plugin(host.xapi.host, "xe-quiesce", command, args)
        return Result(True, value, "", time.monotonic() - started)
    except XenAPI.Failure as failure:
        return Result(False, "", " ".join(failure.details), time.monotonic() - started)
    finally:
        session.xenapi.session.logout()


@pytest.fixture(params=["cli", "plugin"])
def front(request):
    return {"cli": run_cli, "plugin": run_plugin}[request.param]


def vm_argument(host, front):
    """The command gets the name-label, the plugin the uuid: both lookups are used."""
    return "guest-vm" if front is run_cli else host.vm_uuid


def assert_nothing_left(host):
    assert host.snapshot_records() == ([], [])
    assert not [name for name in os.listdir(str(host.tmp_path)) if ".snapshot-" in name]
    assert not host.client.exists(host.control)


# -- success ------------------------------------------------------------------------

def test_quiesced_snapshot_end_to_end(host, front):
    host.make_vm().start_guest()
    result = front(host, "snapshot", vm_argument(host, front), name="nightly")
    assert result.ok, result.error
    assert host.probes == [[True, True]]         # frozen while XAPI snapshots
    assert host.frozen_now() == [False, False]   # and thawed once it has
    [snap], snap_vdis = host.snapshot_records()
    assert result.value == snap["uuid"]
    assert snap["name_label"] == "nightly" and snap["tags"] == ["quiesced"]
    manifest = json.loads(snap["other_config"]["xe-quiesce-manifest"])
    assert sorted(manifest["frozen"]) == sorted(host.mounts)
    assert manifest["vdis"] == {str(devid): vdi for devid, vdi in zip(DEVIDS, host.vdis)}
    db = host.xapi.db
    assert sorted(db["VDI"][vdi["snapshot_of"]]["uuid"] for vdi in snap_vdis) == sorted(host.vdis)
    assert len(snap["VBDs"]) == 3  # the two disks and the CD drive
    # what current xenopsd no longer creates: V owned by the guest, D/vss pointing at it
    vss = "/vss/" + host.vm_uuid
    assert host.client.get_perms(vss)[0] == "n{}".format(DOMID)
    assert host.read("vss") == vss
    assert not host.client.exists(host.control)
    host.wait(lambda: host.read("data/xe-quiesce/state") == "idle", "idle")


def test_check_reports_the_agent_and_the_disks(host, front):
    host.make_vm().start_guest()
    result = front(host, "check", vm_argument(host, front), json=True)
    assert result.ok, result.error
    report = json.loads(result.value)
    assert report["agent"]["advertised"]["feature-quiesce"] == "1"
    assert report["agent"]["state"] == "idle" and report["agent"]["version"]
    assert [disk["vdi"] for disk in report["disks"]] == host.vdis
    assert [(disk["userdevice"], disk["type"]) for disk in report["skipped"]] == [("3", "CD")]
    assert report["quiesced_snapshot"] == {"possible": True, "reason": ""}
    assert host.snapshot_records() == ([], [])


def test_check_in_words(host):
    host.make_vm()
    result = run_cli(host, "check", "guest-vm")
    assert not result.ok  # exit status 2: a quiesced snapshot is not possible
    lines = result.value.splitlines()
    assert lines[1] == "Guest agent: advertises nothing; xe-quiesce version -, state -"
    assert lines[2] == "A snapshot would include 2 disk(s):"
    assert host.vdis[0] in lines[3] and host.vdis[1] in lines[4]
    assert lines[5].split() == ["device", "3", "CD", "skipped", "(empty)"]
    assert lines[6] == ("Quiesced snapshot: not possible: the guest does not advertise "
                        "control/feature-quiesce")


# -- the guest cannot quiesce ----------------------------------------------------------

def test_guest_without_the_agent_is_refused(host, front):
    host.make_vm()
    result = front(host, "snapshot", vm_argument(host, front))
    assert not result.ok
    assert "does not advertise control/feature-quiesce" in result.error
    assert "VM.snapshot" not in host.xapi.calls
    assert_nothing_left(host)


def test_fallback_takes_a_crash_consistent_snapshot_and_says_so(host, front):
    host.make_vm()
    result = front(host, "snapshot", vm_argument(host, front), fallback="crash-consistent")
    assert result.ok, result.error
    [snap], _ = host.snapshot_records()
    assert result.value.splitlines()[-1] == snap["uuid"]
    assert snap["tags"] == ["crash-consistent"]
    assert "feature-quiesce" in snap["other_config"]["xe-quiesce-fallback-reason"]
    if front is run_cli:
        assert "took a crash-consistent snapshot instead" in result.error
    assert host.probes == [[False, False]]


def test_silent_guest_hits_the_acknowledgement_limit(host, front):
    host.make_vm()
    host.client.write(host.home + "/control/feature-quiesce", "1")  # advertised, then gone
    host.ack_timeout = 2
    result = front(host, "snapshot", vm_argument(host, front))
    assert not result.ok
    assert "did not acknowledge the request within 2 s" in result.error
    assert 2 <= result.seconds < 15
    assert "VM.snapshot" not in host.xapi.calls
    assert_nothing_left(host)


def test_guest_silent_after_the_snapshot_leaves_no_orphan(host, front):
    """The guest stops (SIGSTOP) while XAPI snapshots: the result never comes, so the
    snapshot taken is destroyed with its disks; the guest's guard thaws by itself."""
    host.make_vm().start_guest(max_frozen=6)

    def stop_the_guest():
        host.probe()
        os.kill(host.guestd.process.pid, signal.SIGSTOP)

    host.xapi.before_snapshot = stop_the_guest
    result = front(host, "snapshot", vm_argument(host, front), timeout=4)
    assert not result.ok
    assert "did not report a result within 4 s" in result.error
    assert "no snapshot was left behind" in result.error
    assert host.probes == [[True, True]]
    assert {"VM.destroy", "VDI.destroy"} <= set(host.xapi.calls)
    assert_nothing_left(host)
    host.wait(lambda: host.frozen_now() == [False, False], "the guard's thaw")
    os.kill(host.guestd.process.pid, signal.SIGCONT)
    host.wait(lambda: host.read("data/xe-quiesce/state") == "idle", "idle")


def test_vm_snapshot_failing_thaws_the_guest_and_fails_cleanly(host, front):
    host.make_vm().start_guest()
    host.xapi.snapshot_error = SR_FULL
    result = front(host, "snapshot", vm_argument(host, front))
    assert not result.ok
    assert ("VM.snapshot failed: SR_BACKEND_FAILURE_44: There is insufficient space (the "
            "guest was told, thawed and answered: the guest could not quiesce:") in result.error
    assert "snapshots-failed" in result.error
    assert host.probes == [[True, True]]
    assert host.frozen_now() == [False, False]
    assert_nothing_left(host)
    host.wait(lambda: host.read("data/xe-quiesce/state") == "idle", "idle")


def test_snapshot_timeout_is_the_budget_of_vm_snapshot(host, front):
    """A VM.snapshot slower than --snapshot-timeout: the guest is told snapshots-failed
    and thaws, the late snapshot is destroyed, and the admin reads the real cause; the
    same VM.snapshot within a larger budget gives a quiesced snapshot."""
    host.make_vm().start_guest()

    def slow_snapshot():
        host.probe()
        time.sleep(1.5)

    host.xapi.before_snapshot = slow_snapshot
    late = front(host, "snapshot", vm_argument(host, front), snapshot_timeout=0.5)
    assert not late.ok
    assert "snapshot not finished within 0.5 s (the guest was told" in late.error, late.error
    assert "no snapshot was left behind" in late.error
    assert host.frozen_now() == [False, False]
    assert_nothing_left(host)
    host.wait(lambda: host.read("data/xe-quiesce/state") == "idle", "idle")
    taken = front(host, "snapshot", vm_argument(host, front), snapshot_timeout=5)
    assert taken.ok, taken.error
    assert host.probes == [[True, True], [True, True]]
    [snap], _ = host.snapshot_records()
    assert snap["uuid"] == taken.value


# -- refusals before anything happens -----------------------------------------------------

def test_vm_elsewhere_or_not_running_or_unknown_is_refused(host, front):
    xapi = host.xapi
    away = xapi.db["VM"][xapi.add_vm("away", resident_on=xapi.other_host)]["uuid"]
    halted = xapi.db["VM"][xapi.add_vm("halted", power_state="Halted", resident_on=NULL)]["uuid"]
    xapi.add_vm("twin")
    xapi.add_vm("twin")
    expected = {away: "runs on host other-host", halted: "is Halted, not Running",
                "twin": "2 VMs are named 'twin'", str(uuid.uuid4()): "no VM has the uuid",
                "nothing-like-it": "no VM has the uuid or name-label"}
    for vm, text in expected.items():
        result = front(host, "snapshot", vm)
        assert not result.ok and text in result.error, (vm, result.error)
    assert "VM.snapshot" not in xapi.calls


def test_plugin_refuses_unknown_arguments(host):
    result = run_plugin(host, "snapshot", "guest-vm", bogus="1")
    assert not result.ok
    assert result.error.startswith("XENAPI_PLUGIN_FAILURE snapshot HostError")
    assert "unknown argument(s) bogus" in result.error


def test_one_request_per_vm_at_a_time(host, front):
    host.make_vm()
    path = str(host.tmp_path / "xe-quiesce-host.{}.lock".format(host.vm_uuid))
    with open(path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a request in progress holds it
        result = front(host, "snapshot", vm_argument(host, front))
    assert not result.ok
    assert "another quiesced snapshot of VM {} is in progress".format(host.vm_uuid) in result.error
    assert "VM.snapshot" not in host.xapi.calls
