"""SIGKILL of `xe-quiesce run` at every step of the host's conversation: the host is
always answered (after the restart if need be), exactly once, and no filesystem stays
frozen past the session's deadline + 1 s.

Against the real rig: C xenstored, the dom0 roles of testbed/dom0sim.py, two loop
filesystems. The fault is injected by tests/fuzz/crashd.py (the real command line,
killed just before its N-th command); the restart is a plain `xe-quiesce run`, as
systemd's Restart=on-failure starts it.
"""
import json
import os
import signal
import threading
import time

import pytest

from testbed.guestd import GuestDaemon
from testbed.waiting import wait_until
from tests import xstrace
from tests.fuzz import figures
from xe_quiesce.host.xapi_role import XapiError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_FROZEN = 4


class Crashes(object):
    """One rig, one request per crash point, the daemon restarted after each kill."""

    def __init__(self, rig):
        self.rig = rig
        self.run = 0
        self.steps_path = str(rig.tmp_path / "steps")

    def daemon(self, crash_at=None):
        """A daemon started the way the rig starts it, faulty when crash_at is set."""
        rig = self.rig
        self.run += 1
        env = {"PYTHONPATH": ROOT}
        argv = rig.guestd.argv
        if crash_at is not None:
            env.update(XE_QUIESCE_CRASH_AT=str(crash_at), XE_QUIESCE_STEPS=self.steps_path)
        guestd = GuestDaemon(argv[6], argv[7:], str(rig.tmp_path / "daemon{}.log".format(
            self.run)), env)
        if crash_at is not None:
            guestd.argv[2] = "tests.fuzz.crashd"
        rig.guestd, rig.daemon = guestd.start(), guestd.process
        rig.wait_state("idle")
        return guestd

    def request(self, crash_at):
        """One request with the daemon killed before step `crash_at`; the outcome."""
        rig = self.rig
        rig.guestd.stop()
        faulty = self.daemon(crash_at)
        outcome = {}

        def xapi():
            try:
                outcome["result"] = rig.snapshot(ack_timeout=30.0, status_timeout=30.0)
            except XapiError as error:
                outcome["error"] = error

        caller = threading.Thread(target=xapi)
        caller.start()
        wait_until(lambda: faulty.process.poll() is not None or outcome, 20,
                   "the crash at step {} or the answer".format(crash_at))
        # Killed after the answer (cleaning V up): dead, or idle having passed the step.
        wait_until(lambda: faulty.process.poll() is not None or
                   rig.read("data/xe-quiesce/state") == "idle", 20,
                   "the crash at step {} or idle".format(crash_at))
        if faulty.process.poll() == -signal.SIGKILL:
            figures.count("conversation: daemon SIGKILLs")
            self.check_thawed_by_deadline()
            self.daemon()  # the restart
        caller.join(40)
        assert not caller.is_alive() and outcome, "the host got no answer (step {})".format(
            crash_at)
        rig.wait_state("idle")
        assert rig.frozen_now() == [False, False]
        assert rig.client.read_or(rig.vss + "/status") is None
        return outcome

    def check_thawed_by_deadline(self):
        """Not frozen once the session's deadline + 1 s has passed (the guard thaws when
        its owner dies, long before)."""
        rig = self.rig
        path = os.path.join(str(rig.tmp_path / "run"), "state.json")
        try:
            with open(path) as handle:
                state = json.load(handle)
        except FileNotFoundError:
            return  # no session yet
        killed_at = time.time()
        if state.get("status") not in ("frozen", "quiescing"):
            return
        limit = state["deadline"] + 1.0
        while time.time() < limit and any(rig.frozen_now()):
            time.sleep(0.01)
        assert rig.frozen_now() == [False, False], "frozen past the deadline + 1 s"
        figures.worst("conversation: seconds from SIGKILL to thawed (worst)",
                      time.time() - killed_at)


def steps_of_a_clean_request(crashes):
    crashes.request(-1)
    with open(crashes.steps_path) as handle:
        steps = [line.split(" ", 1)[1].strip() for line in handle]
    os.unlink(crashes.steps_path)
    return steps


def guest_status_writes(rig):
    """Every write of C/status: only the guest writes it (xapi removes C). Not by role:
    xenstored's connection ids are addresses, reused by the next connection."""
    return [value for _conn, op, path, value in xstrace.changes(rig.xenstored.trace_path)
            if op == "write" and path == rig.control + "/status"]


@pytest.mark.parametrize("failure", [None, "F8"])
def test_killed_at_every_step_the_host_is_answered_once(rig, failure):
    """F8: snapwatchd answers snapshots-failed, the error path's steps."""
    rig.start(max_frozen=MAX_FROZEN, failure=failure)
    crashes = Crashes(rig)
    steps = steps_of_a_clean_request(crashes)
    assert steps[0] == "Record" and steps[1] == "Rm " + rig.control + "/action"
    assert "StartSession" in steps and "Thaw" in steps
    requests, outcomes = 1, {"replayed": 0, "restarted": 0, "served anew or before the kill": 0}
    for crash_at in range(len(steps)):
        outcome = crashes.request(crash_at)
        requests += 1
        error = outcome.get("error")
        if error is None:
            assert failure is None  # answered with the snapshot
        else:
            assert error.params[1:] and ("restarted" in error.params[1] or
                                         "snapshots-failed" in error.params[1]), error
        log = rig.log()
        kind = ("restarted" if error is not None and "restarted" in error.params[1] else
                "replayed" if "journaled before the restart" in log else
                "served anew or before the kill")
        outcomes[kind] += 1
        # exactly one first status per request: never a second answer
        assert len(guest_status_writes(rig)) == requests, steps[crash_at]
    figures.count("conversation: crash points ({} path)".format(failure or "success"),
                  len(steps))
    for kind, number in outcomes.items():
        figures.count("conversation: answers after a restart, " + kind, number)
    figures.count("conversation: host requests answered", requests)
    # Killed before the ack the restarted daemon serves the request afresh; killed after
    # the answer was journaled it replays it; in between it answers `restarted`.
    assert all(outcomes.values()), outcomes
