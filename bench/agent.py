"""Our agent as users run it: `xe-quiesce run` as its own process, asked through each trigger.

One AgentRig is one daemon (one configuration, one set of mount points) with its own
simulated VM on the bench's xenstored. Triggers:
- control: the JSON request the CLI sends over <run-dir>/control.sock, from the bench;
- cli: the `xe-quiesce freeze` / `xe-quiesce thaw` commands as processes (what an admin
  or a backup script runs; adds interpreter start-up to both ends);
- frozen: `xe-quiesce frozen -- true` (one process: freeze, run the command, thaw);
- xenstore: XAPI's VM.snapshot_with_quiesce conversation (dom0 simulator), with a
  snapshot that returns at once;
- xo: Xen Orchestra's GET /sync and GET /post-sync over HTTPS, a new connection and TLS
  handshake each, as XO sends them, from one client TLS context made once (XO is a
  long-running process: it does not load a CA store per request, and it does not verify
  the guest's self-signed certificate). A context per request costs 20-50 ms of Python's
  CA loading, which an earlier bench counted in the window.
Every sample has the agent's own timestamps (bench/probe_daemon.py) and the external
view (request sent -> answer received).
"""
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid

import psutil

from testbed.dom0sim import Dom0Sim
from testbed.guestd import GuestDaemon
from xe_quiesce.host import xapi_role
from xe_quiesce.host.snapwatchd_role import SnapshotResult
from xe_quiesce.triggers import control
from xe_quiesce.xenstore import XenstoreClient

from .others import sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XO's side of the sync hook: one client context for every request (see the docstring).
XO_CLIENT_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
XO_CLIENT_CONTEXT.check_hostname = False
XO_CLIENT_CONTEXT.verify_mode = ssl.CERT_NONE

READY_TIMEOUT = 60.0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProbeDaemon(GuestDaemon):
    """GuestDaemon (testbed/guestd.py) through bench.probe_daemon, without -v (as deployed),
    under bench.reaper (a prompt reaper of the guard, as PID 1 is on a real guest)."""

    def __init__(self, config, xenstore_args, log_path, env, reaper=True):
        GuestDaemon.__init__(self, config, xenstore_args, log_path, env=env)
        self.argv = ([sys.executable, "-m", "bench.reaper"] if reaper else []) + [
            sys.executable, "-m", "bench.probe_daemon", "run", "--config", config] + list(
                xenstore_args)
        self.reaper = reaper


class StampedClient(object):
    """XAPI's xenstore client, noting when the request (C/action) is written."""

    def __init__(self, client):
        self.client = client
        self.sent = None

    def __getattr__(self, name):
        return getattr(self.client, name)

    def write(self, path, value):
        if path.endswith("/control/snapshot/action"):
            self.sent = time.monotonic()
        return self.client.write(path, value)


class AgentRig(object):
    def __init__(self, name, workdir, xenstored, mounts, domid, sync_first=True,
                 concurrent=True, xo=False, tls_dir=None, reaper=True, expedite=True):
        self.name = name
        self.reaper = reaper
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir)
        self.xenstored = xenstored
        self.mounts = list(mounts)
        self.domid = domid
        self.run_dir = os.path.join(self.workdir, "run")
        self.stamps = os.path.join(self.workdir, "stamps.jsonl")
        self.port = free_port() if xo else None
        self.snapshot_taken = None
        self.config = os.path.join(self.workdir, "xe-quiesce.conf")
        lines = ["[freeze]", "mounts = " + " ".join(self.mounts), "max-frozen = 60",
                 "sync-first = " + ("yes" if sync_first else "no"),
                 "concurrent = " + ("yes" if concurrent else "no"),
                 "expedite-rcu = " + ("yes" if expedite else "no"),
                 "[hooks]", "dir = " + os.path.join(self.workdir, "no-hooks"),
                 "[state]", "run-dir = " + self.run_dir]
        if xo:
            lines += ["[xo-sync-hook]", "port = {}".format(self.port),
                      "allow-from = 127.0.0.1", "address = 127.0.0.1",
                      "tls-dir = " + (tls_dir or os.path.join(self.workdir, "tls"))]
        with open(self.config, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self.sim = self.daemon = self.xapi = None
        self.ready_seconds = None

    def _take(self, vdis, whole_vm):
        self.snapshot_taken = time.monotonic()
        return SnapshotResult(str(uuid.uuid4()), {vdi: str(uuid.uuid4()) for vdi in vdis})

    def start(self):
        """Start the VM's host side, then the daemon; returns once it said READY=1."""
        self.sim = Dom0Sim(self.xenstored.uri, [str(uuid.uuid4())], self._take,
                           domid=self.domid, cdrom=False, timeout=30.0,
                           snapshot_timeout=30.0).start()
        self.xapi = StampedClient(XenstoreClient(self.xenstored.uri, timeout=30.0))
        self.xapi.client.connect()
        notify_path = os.path.join(self.workdir, "notify.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(notify_path)
        listener.settimeout(READY_TIMEOUT)
        try:
            started = time.monotonic()
            self.daemon = ProbeDaemon(
                self.config, ["--xenstore", self.xenstored.uri, "--domain-path", self.sim.home],
                os.path.join(self.workdir, "daemon.log"),
                env={"NOTIFY_SOCKET": notify_path, "XEQ_BENCH_TIMESTAMPS": self.stamps,
                     "PYTHONPATH": REPO}, reaper=self.reaper).start()
            try:
                while listener.recv(256) != b"READY=1":
                    pass
            except socket.timeout:
                raise RuntimeError("{}: no READY=1 within {:.0f} s:\n{}".format(
                    self.name, READY_TIMEOUT, self.daemon.log()[-3000:]))
            self.ready_seconds = time.monotonic() - started
        finally:
            listener.close()
        return self

    @property
    def pid(self):
        """The daemon's pid (the reaper's only child)."""
        if not self.reaper:
            return self.daemon.process.pid
        return psutil.Process(self.daemon.process.pid).children()[0].pid

    def last_stamps(self):
        with open(self.stamps) as handle:
            lines = handle.read().splitlines()
        return json.loads(lines[-1])

    def _agent_sample(self, requested, answered, thaw_answered, **extra):
        """A Sample from the agent's timestamps, with the external view beside it.

        `steps` are the session's steps relative to the request (start, end), seconds.
        """
        record = self.last_stamps()
        stamps = [s for s in record["fs"] if s["thawed_at"] is not None]
        if len(stamps) != len(self.mounts):
            raise RuntimeError("{}: {} of {} filesystems frozen and thawed".format(
                self.name, len(stamps), len(self.mounts)))
        first = min(s["freeze_start"] for s in stamps)
        last_frozen = max(s["frozen_at"] for s in stamps)
        steps = {name: [None if t is None else t - requested for t in span]
                 for name, span in record["steps"].items()}
        return sample(max(s["thawed_at"] for s in stamps) - first, last_frozen - requested,
                      [s["thawed_at"] - s["freeze_start"] for s in stamps],
                      freeze=last_frozen - first, first_freeze=first - requested,
                      external_window=thaw_answered - requested,
                      external_latency=None if answered is None else answered - requested,
                      steps=steps, **extra)

    # -- triggers ----------------------------------------------------------------------

    def via_control(self):
        requested = time.monotonic()
        control.request(self.run_dir, "freeze", 120)
        answered = time.monotonic()
        summary = control.request(self.run_dir, "thaw", 120)
        thaw_answered = time.monotonic()
        return self._agent_sample(requested, answered, thaw_answered,
                                  agent_window=summary["window_seconds"])

    def _cli(self, *args):
        result = subprocess.run([sys.executable, "-m", "xe_quiesce.cli"] + list(args) +
                                ["--config", self.config], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError("xe-quiesce {}: {}".format(" ".join(args), result.stderr))
        return json.loads(result.stdout)

    def via_cli(self):
        """`thaw_start`: from starting the thaw process to the daemon's thaw (its start-up
        inside the window of two-command scripts)."""
        requested = time.monotonic()
        self._cli("freeze", "--json")
        answered = time.monotonic()
        summary = self._cli("thaw", "--json")
        thaw_answered = time.monotonic()
        return self._agent_sample(requested, answered, thaw_answered,
                                  agent_window=summary["window_seconds"],
                                  thaw_start=self.last_stamps()["steps"]["thaw"][0] - answered)

    def via_frozen(self):
        """`xe-quiesce frozen -- true`: one process freezes, runs the command, thaws."""
        requested = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "xe_quiesce.cli", "frozen", "--config",
                                 self.config, "--", "true"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
        done = time.monotonic()
        if result.returncode != 0:
            raise RuntimeError("xe-quiesce frozen -- true: {}".format(result.stderr))
        return self._agent_sample(requested, None, done)

    def via_xenstore(self):
        """XAPI's call; 'answered' is when the host's snapshot callback ran (guest frozen)."""
        self.snapshot_taken = None
        result = xapi_role.snapshot_with_quiesce(self.xapi, self.sim.home, self.sim.vm_uuid,
                                                 ack_timeout=60, status_timeout=120)
        done = time.monotonic()
        manifest = json.loads(result.snapid)
        return self._agent_sample(self.xapi.sent, self.snapshot_taken, done,
                                  agent_window=manifest["window_seconds"])

    def xo_get(self, path):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=120,
                                           context=XO_CLIENT_CONTEXT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read().decode()
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError("XO {}: {} {}".format(path, response.status, body))
        return body

    def via_xo(self):
        requested = time.monotonic()
        self.xo_get("/sync")
        answered = time.monotonic()
        self.xo_get("/post-sync")
        thaw_answered = time.monotonic()
        return self._agent_sample(requested, answered, thaw_answered)

    TRIGGERS = {"control": via_control, "cli": via_cli, "frozen": via_frozen,
                "xenstore": via_xenstore, "xo": via_xo}

    def run(self, trigger):
        return self.TRIGGERS[trigger](self)

    def stop(self):
        if self.daemon is not None:
            code = self.daemon.stop()
            if code not in (0, None):
                raise RuntimeError("{}: daemon exited {}:\n{}".format(
                    self.name, code, self.daemon.log()[-3000:]))
            self.daemon = None
        if self.xapi is not None:
            self.xapi.client.close()
            self.xapi = None
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
