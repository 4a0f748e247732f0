"""The relay scenario's dom0 side: XO's own client code -> `xe-quiesce-host relay` -> the domU.

XO's published `vm.mjs` (tests/xo, run by node) calls the relay in dom0 over HTTPS on the
loopback; the relay plays XAPI and snapwatchd over the real xenstored; the XAPI it asks
(for the VM, its disks and the snapshot XO took) is the tests' stand-in
(tests/xapi_server.py), whose VM.snapshot runs the bed's copy of the backing files while
XO's call is in progress. bed.py puts node, the pinned package, XenAPI, the stand-in and a
certificate (dom0 has no openssl) into dom0's overlay.
"""
import os
import re
import subprocess
import sys
import time

sys.path[:0] = ["/e2e/xo"]
LISTENING = re.compile(r"listening on port (\d+)")
TLS = "/e2e/relay-tls"

try:
    import XenAPI
    from client import XoRun, installed
    from xapi_server import FakeXapi
    MISSING = None if installed() else "XO's client package is not in dom0"
except ImportError as exc:
    MISSING = "the relay scenario's parts are not in dom0 (%s)" % exc


class RelayBed(object):
    """The stand-in XAPI with the domU as its VM, and the relay as its own process."""

    def __init__(self, guest, disks, log):
        self.guest, self.log = guest, log
        self.xapi = FakeXapi().start()
        self.vm = self.xapi.add_vm(guest.name, uuid=guest.vm_uuid, domid=str(guest.domid))
        for number, disk in enumerate(disks):
            # VM.snapshot's own copy is of a token file: the bed copies the real images
            token = "/tmp/e2e-token-%s" % disk.name
            open(token, "w").close()
            self.xapi.add_disk(self.vm, number, token, disk.name, vdi_uuid=disk.vdi)
        self.inventory = "/tmp/e2e-inventory"
        with open(self.inventory, "w") as fh:
            fh.write("INSTALLATION_UUID='%s'\n" % self.xapi.db["host"][self.xapi.host]["uuid"])
        self.relay = self.port = None
        self.relay_log = "/tmp/e2e-relay.log"

    def __enter__(self):
        subprocess.run(["busybox", "ifconfig", "lo", "127.0.0.1", "up"], check=True)
        env = dict(os.environ, PYTHONPATH="/e2e/src", XE_QUIESCE_XAPI_URL=self.xapi.url,
                   XE_QUIESCE_XENSTORE="unix:/run/xenstored/socket",
                   XE_QUIESCE_INVENTORY=self.inventory, XE_QUIESCE_LOCK_DIR="/tmp")
        with open(self.relay_log, "wb") as out:
            self.relay = subprocess.Popen(
                [sys.executable, "-m", "xe_quiesce.host.cli", "relay", "--allow-from",
                 "127.0.0.1", "--address", "127.0.0.1", "--port", "0",
                 "--cert-file", TLS + "/cert.pem", "--key-file", TLS + "/key.pem"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while self.port is None:
            found = LISTENING.search(self.log_text())
            if found:
                self.port = int(found.group(1))
            elif self.relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the relay did not start: " + self.log_text()[-500:])
            else:
                time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            try:
                self.relay.wait(60)
            except subprocess.TimeoutExpired:
                self.relay.kill()
        self.xapi.stop()
        tail = self.log_text()[-1500:]
        self.log("relay log (tail): " + " | ".join(tail.splitlines()))

    def log_text(self):
        with open(self.relay_log, errors="replace") as fh:
            return fh.read()

    def xo_snapshot(self, timeout):
        """XO's snapshot() of the VM tagged for the relay; XAPI's VM.snapshot is taken
        while XO's call runs. XO's events (see tests/xo/driver.mjs)."""
        xo = XoRun({"uuid": self.guest.vm_uuid, "name_label": self.guest.name,
                    "xapiCall": {"waitStdin": True},
                    "tags": ["xo:notify-on-snapshot=https://127.0.0.1:%d/?vm=%s" % (
                        self.port, self.guest.vm_uuid)]})
        try:
            xo.wait_for("xapi-call", timeout)
            session = XenAPI.Session(self.xapi.url)
            session.xenapi.login_with_password("root", "", "1.0", "e2e-xo")
            try:
                session.xenapi.VM.snapshot(self.vm, "XO backup")
            finally:
                session.xenapi.session.logout()
            xo.release()
            return xo.finish(timeout)
        finally:
            xo.kill()

    def quiesced(self):
        return [snap for snap in self.xapi.snapshots()[0] if "quiesced" in snap["tags"]]


def answers(events, path):
    return [(event["status"], (event["body"] or "").strip(), event["t"]) for event in events
            if event["event"] == "request-answered" and event["path"] == path]
