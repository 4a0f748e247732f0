"""Random SIGKILLs of the daemon over every trigger, one daemon per guest, and the
control socket's timeout checked where it is served.

The daemon is the real `xe-quiesce run` on a real xenstored with two loop filesystems
(tests/triggers/test_xo_and_control.py's rig); XO's requests are real HTTPS.
"""
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from testbed.guestd import GuestDaemon
from testbed.waiting import wait_until
from tests.fuzz import figures
from xe_quiesce.errors import QuiesceError
from xe_quiesce.host.xapi_role import FAILED, XapiError
from xe_quiesce.triggers import control

MAX_FROZEN = 3
KILLS = 12


def run_dir(xo):
    return str(xo.tmp_path / "run")


def daemon_args(xo):
    return ["--xenstore", xo.xenstored.uri, "--domain-path", xo.sim.home]


def restart(xo, run):
    xo.daemon = GuestDaemon(xo.config, daemon_args(xo),
                            str(xo.tmp_path / "daemon-{}.log".format(run))).start()
    with_client(xo, lambda client: xo.daemon.wait_for(
        lambda: client.read_or(xo.sim.home + "/data/xe-quiesce/state") == "idle",
        "the restarted daemon idle", 20))


def with_client(xo, action):
    from xe_quiesce.xenstore import XenstoreClient

    with XenstoreClient(xo.xenstored.uri, timeout=5.0) as client:
        return action(client)


# -- one daemon per guest ------------------------------------------------------------

def test_a_second_daemon_is_refused_in_one_line_and_the_first_keeps_serving(xo):
    xo.start()
    first = xo.daemon.process.pid
    second = subprocess.run([sys.executable, "-m", "xe_quiesce.cli", "run", "--config",
                             xo.config] + daemon_args(xo), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        "xe-quiesce: error: another xe-quiesce daemon (pid {}) is running with run "
        "directory {}".format(first, run_dir(xo))]
    status = xo.cli("status")
    assert "Daemon: running, pid {}.".format(first) in status.stdout
    frozen = xo.cli("freeze", "--json")
    assert json.loads(frozen.stdout)["trigger"] == "cli" and xo.frozen() == [True, True]
    assert json.loads(xo.cli("status", "--json").stdout)["daemon"]["held_by_daemon"] == "cli"
    assert xo.cli("thaw").returncode == 0 and xo.frozen() == [False, False]
    assert xo.daemon.stop() == 0
    assert not os.path.exists(os.path.join(run_dir(xo), "control.sock"))


def test_a_port_in_use_is_one_line_and_xenstore_is_still_served(xo):
    taken = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    taken.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    taken.bind(("::", xo.port))
    taken.listen(1)
    try:
        xo.start()
        log = xo.daemon.log()
        assert "Traceback" not in log
        assert "cannot listen on port {}: Address already in use".format(xo.port) in log
        assert "Xen Orchestra sync hook: off (cannot listen on port" in xo.cli("status").stdout
        assert xo.sim.snapshot_with_quiesce().snapuuid
    finally:
        taken.close()


# -- the control socket's timeout ------------------------------------------------------

@pytest.mark.parametrize("timeout", [1e9, float("inf"), float("nan"), -1, 0, True, "2",
                                     MAX_FROZEN + 0.5])
def test_the_daemon_refuses_a_timeout_the_cli_would_refuse(xo, timeout):
    """Sent as JSON by any local root process (1e999 and NaN are JSON to Python)."""
    xo.start(max_frozen=MAX_FROZEN)
    with pytest.raises(QuiesceError, match="timeout must be"):
        control.request(run_dir(xo), "freeze", 30, timeout=timeout)
    assert xo.frozen() == [False, False]
    summary = control.request(run_dir(xo), "freeze", 30, timeout=1.5)
    assert summary["deadline"] - time.time() <= 1.5
    assert control.request(run_dir(xo), "thaw", 30)["result"] == "thawed"
    figures.count("control socket: out-of-range timeouts refused")


# -- random SIGKILLs over every trigger -------------------------------------------------

def xo_sync(xo, outcome):
    try:
        outcome["xo"] = xo.get("/sync", timeout=20)
    except (OSError, ssl.SSLError) as error:  # the daemon died mid-answer
        outcome["xo"] = error


def xapi(xo, outcome):
    try:
        outcome["xapi"] = xo.sim.snapshot_with_quiesce(ack_timeout=30.0, status_timeout=30.0)
    except XapiError as error:
        outcome["xapi"] = error


def cli(xo, outcome):
    outcome["cli"] = xo.cli("freeze", "--json").returncode


def test_random_sigkills_over_every_trigger_thaw_by_the_deadline_and_answer_the_host(xo):
    seed = figures.SEED
    chance = random.Random(seed)
    xo.start(max_frozen=MAX_FROZEN)
    xo.snapshot_hold = lambda: time.sleep(chance.uniform(0, 0.5))
    triggers = {"xapi": xapi, "xo": xo_sync, "cli": cli}
    worst_late = 0.0
    for run in range(KILLS):
        name = sorted(triggers)[run % 3]
        outcome = {}
        caller = threading.Thread(target=triggers[name], args=(xo, outcome))
        caller.start()
        time.sleep(chance.uniform(0, 0.6))
        xo.daemon.process.send_signal(signal.SIGKILL)
        xo.daemon.process.wait()
        killed_at = time.time()
        state = {}
        path = os.path.join(run_dir(xo), "state.json")
        if os.path.exists(path):
            with open(path) as handle:
                state = json.load(handle)
        if state.get("status") in ("quiescing", "frozen"):
            limit = state["deadline"] + 1.0
            while time.time() < limit and any(xo.frozen()):
                time.sleep(0.01)
            assert xo.frozen() == [False, False], "seed {}: frozen past the deadline + 1 s " \
                "({} trigger)".format(seed, name)
            worst_late = max(worst_late, time.time() - killed_at)
        restart(xo, run)
        caller.join(40)
        assert not caller.is_alive(), "seed {}: the {} request hangs".format(seed, name)
        if name == "xapi":  # answered, by the first daemon or after the restart
            answer = outcome["xapi"]
            assert not isinstance(answer, XapiError) or answer.code == FAILED, \
                "seed {}: {}".format(seed, answer)
        # Whatever a CLI freeze that got through left is the admin's: thaw it.
        assert xo.cli("thaw").returncode == 0
        wait_until(lambda: xo.frozen() == [False, False], 10, "thawed")
        status = json.loads(xo.cli("status", "--json").stdout)
        assert status["daemon"]["running"] and status["active"] is None
        figures.count("random SIGKILLs: {} trigger".format(name))
    figures.worst("random SIGKILLs: seconds from SIGKILL to thawed (worst)", worst_late)
