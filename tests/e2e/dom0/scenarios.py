"""The e2e scenarios, run by dom0's /init: one line per scenario on the serial console.

    E2E-RESULT PASS|FAIL|SKIP <scenario>[<xenstored>/<guest>]: <detail>

Configured by kernel parameters (environment of /init): E2E_XENSTORED, E2E_PLAN (one domU per
guest type, with its scenarios in order: "pv:smoke+success/pvh:smoke"), E2E_AGENT (deb, src or
none: what the domU image carries).

dom0 plays XAPI and snapwatchd with the product's own host roles (xe_quiesce.host, from the
source tree copied to /e2e/src), over the real xenstored's socket; the "VM snapshot" they
take is a copy of the disks' backing files.
"""

import os
import shutil
import sys
import threading
import time
import uuid

sys.path[:0] = ["/e2e", "/e2e/dom0", "/e2e/src"]
import copies  # noqa: E402
import relay  # noqa: E402
import xscli  # noqa: E402
from guest import Guest, GuestError, make_disks  # noqa: E402
from spy import Spy  # noqa: E402

try:
    from xe_quiesce.host import xapi_role
    from xe_quiesce.host.snapwatchd_role import SnapshotResult, Snapwatchd
    from xe_quiesce.xenstore import XenstoreClient
    HOST_ROLE_MISSING = None
except ImportError as exc:  # an older tree: the agent scenarios say so and skip
    HOST_ROLE_MISSING = "xe_quiesce.host is not importable in dom0 (%s)" % exc

XENSTORED = os.environ.get("E2E_XENSTORED", "oxenstored")
AGENT = os.environ.get("E2E_AGENT", "none")
# The agent's [freeze] max-frozen per guest type, written before it starts. The deadline
# covers the request's whole hold (hooks, sync, FIFREEZE): under TCG a PV domU takes ~4 s
# from request to frozen, a PVH one (nested paging emulated) ~30 s. no-answer waits it out.
MAX_FROZEN = {"pv": 60.0, "pvh": 120.0}
XENSTORE_URI = "unix:/run/xenstored/socket"   # both daemons, as Debian's init script starts them
GUEST_ATTEMPTS = 2  # a domU that dies (not a scenario that fails) gets one more
SLACK = 15.0        # emulation is slow: allowed lateness on every guest-side deadline
ACK_LIMIT = 5.0     # the agent deletes C/action within 1 s; allow for TCG
SNAPSHOT_BUDGET = 20.0  # snapwatchd allows VM.snapshot 10 s (F8); doubled for emulation


class Skip(Exception):
    pass


class Fail(Exception):
    pass


def log(msg):
    print("e2e-dom0: " + msg, flush=True)


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


class Bed(object):
    """State shared by the scenarios of one guest: the guest, its disks, its LVM status."""

    def __init__(self, guest, disks, setup, max_frozen):
        self.guest, self.disks, self.setup = guest, disks, setup
        self.max_frozen = max_frozen
        self.lvm = setup.get("lvm_ok", False)
        self.snaps = 0
        self.agent_broken = None    # the first diagnosis; later scenarios fail at once

    def folder(self):
        self.snaps += 1
        return "/srv/e2e/snap-%d" % self.snaps

    def take(self, vdis, folder):
        """Copy while frozen; record whether the writers really stood still meanwhile."""
        before = self.guest.progress()
        started = time.monotonic()
        snaps = copies.take(self.disks, vdis, folder)
        copy_s = time.monotonic() - started
        after = self.guest.progress()
        return snaps, {"before": before, "after": after, "copy_s": copy_s, "vdis": list(vdis)}

    def check(self, folder):
        try:
            results = copies.check_all(folder, self.lvm)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        bad = {k: v[1] for k, v in results.items() if not v[0]}
        expect(not bad, "copies inconsistent: %s" % bad)
        return "copies clean: " + ", ".join(sorted(results))

    def wait_thawed(self, timeout):
        """Seconds until every writer made progress again, or Fail."""
        start = time.monotonic()
        first = now = self.guest.progress()
        while time.monotonic() - start < timeout:
            time.sleep(0.5)
            now = self.guest.progress()
            if all(now[k] > first[k] for k in first):
                return time.monotonic() - start
        raise Fail("writers still blocked %.0f s later (still frozen?): %s" % (timeout, now))

    def all_vdis(self):
        return {d.vdi for d in self.disks}


def scenario_smoke(bed):
    """The bed itself: fsfreeze in the domU, dom0 copies, fsfreeze -u, copies check clean."""
    bed.guest.cmd("freeze")
    folder = bed.folder()
    try:
        _, copy = bed.take(bed.all_vdis(), folder)
    finally:
        bed.guest.cmd("thaw")
    expect(copy["before"] == copy["after"] and min(copy["before"].values()) > 0,
           "writers advanced while frozen: %s -> %s" % (copy["before"], copy["after"]))
    thaw_s = bed.wait_thawed(20)
    return "%s; copy %.1f s; writers resumed %.1f s after thaw" % (
        bed.check(folder), copy["copy_s"], thaw_s)


def need_agent(bed):
    if AGENT == "none":
        raise Skip("no agent in the domU: no built .deb and no `xe-quiesce run` in the tree")
    if HOST_ROLE_MISSING:
        raise Skip(HOST_ROLE_MISSING)
    if bed.agent_broken:
        raise Fail("the agent does not serve (diagnosed above): %s" % bed.agent_broken[:200])
    feature = bed.guest.home + "/control/feature-quiesce"
    # A Python daemon starts in tens of seconds under emulation.
    if not xscli.wait(lambda: xscli.read(feature) == "1", 120, 0.5):
        bed.agent_broken = "the agent does not advertise (control/feature-quiesce %r): %s" % (
            xscli.read(feature), bed.guest.cmd("agent-diagnose"))
        raise Fail(bed.agent_broken)


class Request(object):
    """One VM.snapshot_with_quiesce: XAPI's call, snapwatchd serving (unless silent), a spy."""

    def __init__(self, bed, answer, status_timeout):
        self.bed, self.answer, self.status_timeout = bed, answer, status_timeout
        self.folder = bed.folder()
        self.copy = None
        self.snapuuid = None
        self.result = self.error = None
        self.spy = Spy(bed.guest.home, "/vss/" + bed.guest.vm_uuid)
        self.stop = threading.Event()
        self.snapwatchd = None
        self.thread = threading.Thread(target=self.call, daemon=True)

    def take_snapshot(self, vdis, whole_vm):
        snaps, self.copy = self.bed.take(vdis, self.folder)
        self.copy["whole_vm"] = whole_vm
        self.snapuuid = str(uuid.uuid4())
        return SnapshotResult(self.snapuuid, snaps)

    def serve(self):
        with XenstoreClient(XENSTORE_URI) as client:
            self.snapwatchd = Snapwatchd(
                client, "/vss/" + self.bed.guest.vm_uuid, self.bed.guest.home,
                sorted(self.bed.all_vdis()), self.take_snapshot, snapshot_timeout=SNAPSHOT_BUDGET)
            self.snapwatchd.serve(self.stop.is_set)

    def call(self):
        try:
            with XenstoreClient(XENSTORE_URI) as client:
                self.result = xapi_role.snapshot_with_quiesce(
                    client, self.bed.guest.home, self.bed.guest.vm_uuid,
                    status_timeout=self.status_timeout)
        except xapi_role.XapiError as exc:
            self.error = exc
        except Exception as exc:  # reported as the scenario's failure
            self.error = exc

    def start(self):
        self.spy.start()
        if self.answer:
            threading.Thread(target=self.serve, daemon=True).start()
        self.thread.start()
        return self

    def finish(self, timeout):
        self.thread.join(timeout)
        self.stop.set()
        self.spy.stop()
        if self.thread.is_alive():
            raise Fail("XAPI's call still waiting after %.0f s" % timeout)

    def when(self, key, value):
        return self.spy.first(key, value)

    def discard(self):
        shutil.rmtree(self.folder, ignore_errors=True)


def expect_success(bed, req):
    expect(req.error is None and req.result is not None,
           "XAPI got %s: %s" % (type(req.error).__name__, req.error))
    ack = req.spy.acknowledged()
    expect(ack is not None and ack <= ACK_LIMIT, "C/action deleted after %s s" % ack)
    expect(req.copy is not None, "snapwatchd never took the snapshot: %s"
           % (req.snapwatchd.outcomes if req.snapwatchd else None))
    expect(set(req.copy["vdis"]) == bed.all_vdis() and req.copy["whole_vm"],
           "V/snapshot listed %s, the VM has %s" % (sorted(req.copy["vdis"]),
                                                   sorted(bed.all_vdis())))
    expect(req.result.snapuuid == req.snapuuid,
           "C/snapuuid %r is not snapwatchd's %r" % (req.result.snapuuid, req.snapuuid))
    expect(req.copy["before"] == req.copy["after"], "writers advanced during the copy: %s -> %s"
           % (req.copy["before"], req.copy["after"]))
    vss_status = "/vss/%s/status" % bed.guest.vm_uuid
    expect(xscli.wait(lambda: not xscli.exists(vss_status), 10, 0.2),
           "V/status left behind: %r" % xscli.read(vss_status))
    thaw_s = bed.wait_thawed(20)
    answered = req.when("vss-status", "snapshots-created")
    frozen = req.spy.last_before("vss-status", "create-snapshots", answered or 0)
    requested = req.spy.requested()
    return "%s; ack %.2f s, request->create-snapshots %.1f s, create-snapshots->" \
        "snapshots-created %.1f s (copy %.1f s), writers resumed %.1f s after" % (
            bed.check(req.folder), ack, (frozen or 0) - (requested or 0),
            (answered or 0) - (frozen or 0), req.copy["copy_s"], thaw_s)


def scenario_success(bed):
    need_agent(bed)
    req = Request(bed, True, 120).start()
    req.finish(200)
    return expect_success(bed, req)


def scenario_no_answer(bed):
    """snapwatchd never answers (F11/F13): thawed by the deadline, snapshot-error with C/error."""
    need_agent(bed)
    req = Request(bed, False, bed.max_frozen + 60).start()
    req.finish(bed.max_frozen + 140)
    req.discard()
    frozen = req.when("vss-status", "create-snapshots")
    expect(frozen, "the guest never wrote V/status = create-snapshots")
    code = getattr(req.error, "code", None)
    expect(code == xapi_role.FAILED or code in xapi_role.VSS_REQUESTER_ERRORS,
           "XAPI got %s, not %s" % (req.error or req.result, xapi_role.FAILED))
    late = req.when("status", "snapshot-error") - frozen
    expect(late <= bed.max_frozen + SLACK, "snapshot-error %.1f s after create-snapshots "
           "(max-frozen %.0f)" % (late, bed.max_frozen))
    thaw_s = bed.wait_thawed(10)
    return "%s %s %.1f s after create-snapshots (max-frozen %.0f); writers moving %.1f s later" \
        % (code, req.error.params, late, bed.max_frozen, thaw_s)


def scenario_sigkill(bed):
    """The agent SIGKILLed while frozen: its guard thaws by the deadline; the restarted service
    reconciles (no stale V/status left) and serves the next request."""
    need_agent(bed)
    req = Request(bed, False, bed.max_frozen + 15).start()
    try:
        if not xscli.wait(lambda: req.when("vss-status", "create-snapshots"), 60, 0.1):
            req.finish(bed.max_frozen + 100)
            raise Fail("the guest never wrote V/status = create-snapshots; XAPI got %s"
                       % (req.error or req.result))
        frozen = req.when("vss-status", "create-snapshots")
        killed = bed.guest.cmd("agent-kill")
        killed_at = time.monotonic() - frozen
        bed.wait_thawed(bed.max_frozen + SLACK)
        thawed_at = time.monotonic() - frozen
        expect(thawed_at <= bed.max_frozen + SLACK,
               "thawed %.1f s after the freeze (max-frozen %.0f)" % (thawed_at, bed.max_frozen))
        restarted = bed.guest.cmd("agent-start")["pid"]
        expect(restarted and restarted != killed["killed"],
               "service not restarted (pid %r)" % restarted)
        req.finish(bed.max_frozen + 100)
    finally:
        req.stop.set()
        req.discard()
    status = bed.guest.cmd("agent-cli", "status")
    lines = status["output"].splitlines()
    last = [line for line in lines if line.startswith("Last xapi session")]
    expect(status["rc"] == 0 and "Nothing frozen." in lines and last and "reconciled" in last[0],
           "`xe-quiesce status` after the restart (rc %d) does not say nothing is frozen and "
           "the killed session was reconciled: %s" % (status["rc"], status["output"][-400:]))
    need_agent(bed)  # the restarted agent advertises again
    # The killed session's V/status = create-snapshots must not outlive the restart: a
    # snapwatchd that comes back would snapshot an unfrozen guest and race the next request.
    vss_status = "/vss/%s/status" % bed.guest.vm_uuid
    expect(xscli.wait(lambda: xscli.read(vss_status) != "create-snapshots", 15, 0.5),
           "the restarted agent left the killed session's V/status = create-snapshots in place "
           "(contract (a) 2.2/step 8: clean V when reconciling); `xe-quiesce status`: %s"
           % status["output"][-300:])
    follow = Request(bed, True, 120).start()
    follow.finish(200)
    detail = expect_success(bed, follow)
    return "killed pid %d %.1f s into the freeze (left: %s); writers moving %.1f s after the " \
        "freeze; XAPI saw %s; `xe-quiesce status`: Nothing frozen. %s; next request: %s" % (
            killed["killed"], killed_at, killed["left"], thawed_at, req.error or "success",
            last[0], detail)


def scenario_relay(bed):
    """XO's own client code -> `xe-quiesce-host relay` in dom0 -> the agent over xenstore,
    its XO listener off: frozen during XAPI's VM.snapshot, the snapshot tagged quiesced."""
    need_agent(bed)
    if relay.MISSING:
        raise Skip(relay.MISSING)
    folder = bed.folder()
    copy = {}

    def take():  # XAPI's VM.snapshot, run while XO's snapshot call is in progress
        copy["snaps"], copy["stats"] = bed.take(bed.all_vdis(), folder)

    with relay.RelayBed(bed.guest, bed.disks, log) as rb:
        rb.xapi.before_snapshot = take
        events = rb.xo_snapshot(240)
        sync = relay.answers(events, "/sync")
        post = relay.answers(events, "/post-sync")
        expect([a[:2] for a in sync] == [(200, "frozen: VM " + bed.guest.vm_uuid)],
               "XO's /sync got %s" % sync)
        expect("stats" in copy, "XAPI's VM.snapshot never ran")
        stats = copy["stats"]
        expect(stats["before"] == stats["after"], "writers advanced during the copy: %s -> %s"
               % (stats["before"], stats["after"]))
        snaps = rb.quiesced()
        expect(len(snaps) == 1 and [a[:2] for a in post] == [
            (200, "quiesced snapshot " + snaps[0]["uuid"])],
            "XO's /post-sync got %s; quiesced snapshots %s" % (post, snaps))
        expect("xe-quiesce-manifest" in snaps[0]["other_config"], "no manifest on the snapshot")
    thaw_s = bed.wait_thawed(20)
    sent = [e["t"] for e in events if e["event"] == "request-sent" and e["path"] == "/sync"]
    return "%s; XO's /sync answered 200 %.1f s after it was sent, copy %.1f s, /post-sync " \
        "200, snapshot tagged quiesced with the manifest, writers resumed %.1f s after" % (
            bed.check(folder), sync[0][2] - sent[0], stats["copy_s"], thaw_s)


SCENARIOS = {"smoke": scenario_smoke, "success": scenario_success,
             "no-answer": scenario_no_answer, "sigkill": scenario_sigkill,
             "relay": scenario_relay}


def report(verdict, name, detail):
    print("E2E-RESULT %s %s: %s" % (verdict, name, " ".join(str(detail).split())), flush=True)


def run_scenario(bed, name):
    """(verdict, detail) of one scenario."""
    started = time.monotonic()
    try:
        detail = SCENARIOS[name](bed)
        verdict = "PASS"
    except Skip as exc:
        verdict, detail = "SKIP", exc
    except (Fail, GuestError, xscli.XenstoreError) as exc:
        verdict, detail = "FAIL", exc
    except Exception as exc:
        verdict, detail = "FAIL", "%s: %s" % (type(exc).__name__, exc)
    return verdict, "%s (%.0f s)" % (detail, time.monotonic() - started)


def guest_attempt(kind, disks, wanted):
    """Boot a domU and run `wanted` on it: ([(verdict, name, detail)], died) where died
    names the step during which the domU itself died (crash, triple fault), else None."""
    results = []
    try:
        guest = Guest(kind, disks, AGENT, log).__enter__()
    except Exception as exc:
        return [("FAIL", name, "domU did not boot: %s" % exc) for name in wanted + ["lvm"]], None
    step = "set-up"
    try:
        if AGENT != "none":  # first: its start-up (tens of seconds) overlaps the set-up
            log("agent started: %s" % guest.cmd("agent-start", "%g" % MAX_FROZEN[kind]))
        setup = guest.cmd("setup")
        log("%s setup: %s" % (guest.name, setup))
        results.append(("PASS" if setup.get("lvm_ok") else "SKIP", "lvm",
                        "LVM VG spanning two VBDs: %s" % setup.get("lvm")))
        guest.cmd("workload-start")
        # A snapshot proves something only once every writer has committed.
        if not xscli.wait(lambda: min(guest.progress().values()) > 0, 180, 1.0):
            raise GuestError("writers have not committed within 180 s: %s" % guest.progress())
        bed = Bed(guest, disks, setup, MAX_FROZEN[kind])
        for step in wanted:
            verdict, detail = run_scenario(bed, step)
            if verdict == "FAIL" and not guest.alive():
                return results, step
            results.append((verdict, step, detail))
    except Exception as exc:
        if not guest.alive():
            return results, step
        results.append(("FAIL", "guest", "%s: %s" % (type(exc).__name__, exc)))
    finally:
        guest.__exit__(None, None, None)
    return results, None


def run_guest(kind, disks, wanted):
    """Every scenario of one guest type, one line each.

    If the domU itself dies (under TCG an emulated PVH domU was seen to triple-fault in
    the middle of a request), the scenarios from the one it died in run again on a new
    domU, once, and their lines say so; a second death fails them."""
    label = "[%s/%s]" % (XENSTORED, kind)
    results, todo, note = [], list(wanted), ""
    for attempt in range(1, GUEST_ATTEMPTS + 1):
        done, died = guest_attempt(kind, disks, todo)
        seen = {r[1] for r in results}
        results += [(verdict, name, detail + note) for verdict, name, detail in done
                    if name not in seen]
        todo = [name for name in todo if name not in {r[1] for r in done}]
        if died is None:
            break
        if attempt == GUEST_ATTEMPTS:
            results += [("FAIL", name, "the domU died during %s on every attempt (see the "
                         "serial log)" % died) for name in todo]
            break
        log("%s: the domU died during %s; running %s again on a new domU"
            % (kind, died, ", ".join(todo)))
        note = " [on a second domU: the first died during %s, see the serial log]" % died
    if "lvm" not in {r[1] for r in results}:
        results.append(("FAIL", "lvm", "no set-up result"))
    for verdict, name, detail in results:
        report(verdict, name + label, detail)


def main():
    plan = [(guest, scenarios.split("+")) for guest, _, scenarios in
            (item.partition(":") for item in os.environ.get("E2E_PLAN", "pv:smoke").split("/"))]
    unknown = [n for _, wanted in plan for n in wanted if n not in SCENARIOS]
    if unknown:
        report("FAIL", "config", "unknown scenarios %s" % unknown)
        return 1
    disks = make_disks()
    for kind, wanted in plan:
        run_guest(kind, disks, wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
