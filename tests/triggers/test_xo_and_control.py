"""Xen Orchestra's sync hook and the local control socket, against the real daemon.

The daemon runs as its own process on the tests' real xenstored, with two loop
filesystems; XO's requests are made with a real HTTPS client exactly as XO's code sends
them (GET, no Authorization header, certificate not verified), over IPv4 and IPv6.
"""
import base64
import http.client
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest

from bench.idle import thread_states, waits_with_timeout
from testbed.dom0sim import Dom0Sim
from testbed.guestd import GuestDaemon
from testbed.loopfs import is_frozen
from testbed.waiting import wait_until
from tests import REPO
from xe_quiesce.host.snapwatchd_role import SnapshotResult

SECRET = b"s3cret-for-xo"


def free_port():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::", 0))
        return sock.getsockname()[1]


class XoRig(object):
    def __init__(self, xenstored, loopfs, write_config, tmp_path):
        self.xenstored = xenstored
        self.tmp_path = tmp_path
        self.filesystems = [loopfs("ext4"), loopfs("xfs")]
        self.mounts = [fs.mount_point for fs in self.filesystems]
        self.port = free_port()
        self.write_config = write_config
        self.snapshot_hold = None
        self.sim = Dom0Sim(xenstored.uri, [str(uuid.uuid4()) for _ in self.mounts],
                           self._take).start()
        self.daemon = None

    def _take(self, vdis, whole_vm):
        if self.snapshot_hold:
            self.snapshot_hold()
        return SnapshotResult(str(uuid.uuid4()), {vdi: str(uuid.uuid4()) for vdi in vdis})

    def start(self, allow_from="127.0.0.1 ::1", secret=False, max_frozen=10, log_path=None,
              sync_timeout=None, hooks=""):
        lines = ["[xo-sync-hook]", "port = {}".format(self.port),
                 "tls-dir = {}".format(self.tmp_path / "tls")]
        if sync_timeout:
            lines.append("sync-timeout = {}".format(sync_timeout))
        if allow_from:
            lines.append("allow-from = " + allow_from)
        if secret:
            path = self.tmp_path / "secret"
            path.write_bytes(SECRET + b"\n")
            os.chmod(str(path), 0o600)
            lines.append("secret-file = {}".format(path))
        self.config = self.write_config(self.mounts, max_frozen=max_frozen,
                                        extra="\n".join(lines) + "\n" + hooks)
        notify_path = str(self.tmp_path / "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(notify_path)
        listener.settimeout(20)
        self.daemon = GuestDaemon(self.config, ["--xenstore", self.xenstored.uri,
                                                "--domain-path", self.sim.home],
                                  log_path or str(self.tmp_path / "daemon.log"),
                                  env={"NOTIFY_SOCKET": notify_path}).start()
        try:
            while listener.recv(256) != b"READY=1":
                pass
        finally:
            listener.close()
        return self

    def get(self, path, host="127.0.0.1", headers=None, method="GET", timeout=30):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, self.port, timeout=timeout, context=context)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def cli(self, *args):
        return subprocess.run(
            [sys.executable, "-m", "xe_quiesce.cli"] + list(args) +
            ["--config", self.config], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=60)

    def frozen(self):
        return [is_frozen(point) for point in self.mounts]

    def last(self, trigger="xo"):
        """The last finished session of `trigger` as `status --json` shows it, or None."""
        return json.loads(self.cli("status", "--json").stdout)["last"].get(trigger)

    def status(self):
        return json.loads(self.cli("status", "--json").stdout)

    def stop(self):
        if self.daemon:
            self.daemon.stop()
        self.sim.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_sync_freezes_and_post_sync_thaws(xo, host):
    xo.start()
    key = xo.tmp_path / "tls" / "key.pem"
    assert stat.S_IMODE(os.stat(str(key)).st_mode) == 0o600, "the generated key is root's"
    status, body = xo.get("/sync", host=host)
    assert status == 200 and body.startswith("frozen:"), body
    assert xo.frozen() == [True, True]
    status, body = xo.get("/post-sync", host=host)
    assert status == 200 and body.startswith("thawed"), body
    assert xo.frozen() == [False, False]
    status, body = xo.get("/post-sync", host=host)
    assert (status, body.strip()) == (200, "nothing was frozen")
    last = json.loads(xo.cli("status", "--json").stdout)["last"]["xo"]
    assert last["result"] == "thawed"


def test_no_post_sync_thaws_at_the_deadline(xo):
    xo.start(max_frozen=2)
    started = time.monotonic()
    assert xo.get("/sync")[0] == 200
    wait_until(lambda: xo.frozen() == [False, False], 2 + 1.5, "the deadline thaw")
    assert time.monotonic() - started <= 2 + 1.5
    assert xo.get("/post-sync") == (200, "nothing was frozen\n")


def test_with_a_secret_the_bearer_header_is_required(xo):
    xo.start(allow_from="", secret=True)
    assert xo.get("/sync")[0] == 403
    wrong = {"Authorization": "Bearer " + base64.b64encode(b"guess").decode()}
    assert xo.get("/sync", headers=wrong)[0] == 403
    assert xo.frozen() == [False, False]
    right = {"Authorization": "Bearer " + base64.b64encode(SECRET).decode()}
    assert xo.get("/sync", headers=right)[0] == 200
    assert xo.frozen() == [True, True]
    assert xo.get("/post-sync", headers=right)[0] == 200


def test_refusals_freeze_nothing(xo):
    xo.start(allow_from="192.0.2.0/24")  # loopback is not an XO server here
    assert xo.get("/sync")[0] == 403
    assert xo.get("/sync", host="::1")[0] == 403
    assert xo.frozen() == [False, False]


def test_other_paths_methods_and_a_second_sync(xo):
    xo.start()
    assert xo.get("/")[0] == 404
    assert xo.get("/sync", method="POST")[0] == 405
    assert xo.get("/snapshot")[0] == 404
    assert xo.frozen() == [False, False]
    assert xo.get("/sync")[0] == 200
    status, body = xo.get("/sync")
    assert status == 409 and "xo session" in body
    assert xo.get("/post-sync")[0] == 200


def test_listener_off_without_allow_from_or_secret(xo):
    xo.start(allow_from="")
    with pytest.raises(OSError):
        xo.get("/sync", timeout=3)
    status = xo.cli("status")
    assert "Xen Orchestra sync hook: off (the Xen Orchestra sync hook is off: set" in status.stdout


def test_cli_goes_through_the_daemon_and_busy_names_the_other_trigger(xo):
    xo.start()
    frozen = xo.cli("freeze", "--json")
    assert frozen.returncode == 0, frozen.stderr
    assert json.loads(frozen.stdout)["trigger"] == "cli"
    assert xo.frozen() == [True, True]
    status, body = xo.get("/sync")
    assert status == 409 and "cli session" in body
    status, body = xo.get("/post-sync")
    assert status == 409, "XO must not thaw the admin's freeze"
    text = xo.cli("status").stdout
    assert "Daemon: running" in text and "Frozen by a cli session" in text
    thaw = xo.cli("thaw", "--json")
    assert thaw.returncode == 0 and json.loads(thaw.stdout)["result"] == "thawed"
    assert xo.frozen() == [False, False]
    assert xo.get("/sync")[0] == 200
    busy = xo.cli("freeze")
    assert busy.returncode == 1 and "a xo session" in busy.stderr
    assert xo.get("/post-sync")[0] == 200


def test_cli_frozen_runs_the_command_inside_the_daemons_session(xo):
    """`xe-quiesce frozen -- COMMAND` through the daemon: COMMAND runs while the daemon
    holds the freeze (its own `status` says so), the thaw follows its exit, and its exit
    status is ours."""
    xo.start()
    command = ("import json, subprocess, sys\n"
               "sys.path.insert(0, {!r})\n"
               "from testbed.loopfs import is_frozen\n"
               "status = subprocess.run([sys.executable, '-m', 'xe_quiesce.cli', 'status', "
               "'--json', '--config', {!r}], stdout=subprocess.PIPE, check=True).stdout\n"
               "print(json.dumps([json.loads(status)['daemon']['held_by_daemon'], "
               "[is_frozen(p) for p in {!r}]]))\n"
               "sys.exit(5)\n").format(REPO, xo.config, xo.mounts)
    result = subprocess.run(
        [sys.executable, "-m", "xe_quiesce.cli", "frozen", "--config", xo.config, "--",
         sys.executable, "-B", "-c", command], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 5, result.stderr
    assert json.loads(result.stdout) == ["cli", [True, True]]
    assert xo.frozen() == [False, False]
    last = json.loads(xo.cli("status", "--json").stdout)["last"]["cli"]
    assert last["result"] == "thawed"


def test_thaw_through_the_daemon_does_not_import_click(xo):
    """`thaw` starts inside two-command scripts' frozen window: served without click
    (python -X importtime lists every module loaded), printing what click's thaw prints."""
    xo.start()
    assert xo.cli("freeze").returncode == 0 and xo.frozen() == [True, True]
    thaw = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "xe_quiesce.cli", "thaw", "--config",
         xo.config], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=60)
    assert thaw.returncode == 0 and thaw.stdout == "thawed: thawed\n"
    loaded = [line.split("|")[-1].strip() for line in thaw.stderr.splitlines()
              if line.startswith("import time:")]
    assert "xe_quiesce.triggers.control" in loaded and "click" not in loaded
    assert [line for line in thaw.stderr.splitlines()
            if not line.startswith("import time:")] == []
    assert xo.frozen() == [False, False]
    again = xo.cli("thaw", "--json")
    assert json.loads(again.stdout) == {"result": "nothing-frozen",
                                        "message": "nothing was frozen"}
    bad = xo.cli("thaw", "--bogus")
    assert bad.returncode == 1 and "no such option" in bad.stderr.lower()
    assert "--bogus" in bad.stderr


def test_xapi_session_makes_the_others_busy(xo):
    xo.start()
    answers = {}

    def during_snapshot():
        answers["sync"] = xo.get("/sync")
        answers["cli"] = xo.cli("thaw")

    xo.snapshot_hold = during_snapshot
    xo.sim.snapshot_with_quiesce()
    assert answers["sync"][0] == 409 and "xapi session" in answers["sync"][1]
    assert answers["cli"].returncode == 1 and "a xapi session" in answers["cli"].stderr
    assert xo.frozen() == [False, False]


def test_post_sync_is_served_while_frozen_with_the_log_on_a_frozen_filesystem(xo):
    """The daemon's own stderr is a file on a frozen filesystem here: nothing may block."""
    xo.start(log_path=xo.filesystems[0].path("daemon.log"))
    assert xo.get("/sync")[0] == 200
    results = []
    worker = threading.Thread(target=lambda: results.append(xo.get("/post-sync", timeout=8)))
    worker.start()
    worker.join(10)
    assert results and results[0][0] == 200
    assert xo.frozen() == [False, False]


def test_idle_daemon_loads_tls_and_psutil_only_when_needed(xo):
    """Idle memory: OpenSSL (ssl, hashlib) and psutil are extension modules, so their
    shared objects in /proc/PID/maps show whether the daemon loaded them."""
    xo.start()
    libraries = ("_ssl.", "_hashlib.", "_psutil_linux.")

    def mapped():
        with open("/proc/{}/maps".format(xo.daemon.process.pid)) as handle:
            maps = handle.read()
        return {lib for lib in libraries if lib in maps}

    assert mapped() == set()
    assert xo.get("/sync")[0] == 200 and xo.frozen() == [True, True]
    # hashlib (through hmac) only checks a secret-file's Bearer header: none here.
    assert mapped() == {"_ssl.", "_psutil_linux."}
    assert xo.get("/post-sync")[0] == 200 and xo.frozen() == [False, False]


def test_idle_daemon_has_no_timed_waits_and_stops_at_once(xo):
    """Idle, every thread of the daemon (xenstore loop, XO listener, control socket,
    the guard's watcher) blocks with no timeout; SIGTERM still ends it at once (a wake-up pipe)."""
    xo.start()
    pid = xo.daemon.process.pid

    def settled():
        """Every thread blocked, and none switched for half a second: start-up's tail after
        READY=1 is over (blocked alone was not enough once the daemon started without
        click: its main thread sometimes still switched a few times in the next ~1 s)."""
        first = thread_states(pid)
        time.sleep(0.5)
        then = thread_states(pid)
        return all(thread["syscall"] != "running" and first.get(tid) and
                   thread["voluntary"] == first[tid]["voluntary"]
                   for tid, thread in then.items())

    wait_until(settled, 30, "the daemon settled")
    before = thread_states(pid)
    time.sleep(3)
    after = thread_states(pid)
    assert len(before) == 4, before  # main, XO listener, control socket, guard watcher
    for tid, thread in after.items():
        assert not waits_with_timeout(thread["syscall"], thread["args"]), \
            "thread {} waits with a timeout: {}".format(tid, thread)
        assert thread["voluntary"] == before[tid]["voluntary"], \
            "thread {} woke up while idle".format(tid)
    started = time.monotonic()
    assert xo.daemon.stop(timeout=10) == 0
    assert time.monotonic() - started < 2


def test_cli_without_daemon_acts_directly(loopfs, write_config, xe_quiesce):
    fs = loopfs("ext4")
    config = write_config([fs.mount_point])
    status = xe_quiesce("status", "--config", config)
    assert "Daemon: not running" in status.stdout
    assert xe_quiesce("freeze", "--config", config).returncode == 0
    assert is_frozen(fs.mount_point)
    assert xe_quiesce("thaw", "--config", config).returncode == 0
    assert not is_frozen(fs.mount_point)
