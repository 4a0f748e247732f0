"""Hostile xenstore values from dom0: random bytes in every key of the request, a V
that is missing or another domain's, garbage in V/status while frozen. Each is a clear
`snapshot-error`, the daemon keeps serving, and nothing is frozen for a bad request.

Real C xenstored, the daemon as its own process (tests/triggers/test_xapi.py's rig);
snapwatchd is silent (F13), so only the values planted here ever answer V/status.
"""
import random
import threading
import uuid

import pytest

from testbed.waiting import wait_until
from tests.fuzz import figures
from tests.triggers.test_xapi import plant
from xe_quiesce.host.xapi_role import FAILED, XapiError

REQUEST_KEYS = ("vss", "device/vbd/51712/device-type", "device/vbd/51712/backend",
                "@backend/sm-data/vdi-uuid", "device/vbd/51728/device-type")
PER_KEY = 5
STATUSES = 4


def hostile(chance):
    """Random bytes (no NUL, which xenstore cannot carry), sometimes long."""
    size = chance.choice([1, 3, 16, 40, 300, 3000])
    return bytes(chance.randrange(1, 256) for _ in range(size))


def path_of(rig, key):
    if key.startswith("@backend"):
        return rig.read("device/vbd/51712/backend") + key[len("@backend"):]
    return rig.home + "/" + key


def refused(rig):
    with pytest.raises(XapiError) as caught:
        rig.snapshot(status_timeout=20.0)
    rig.wait_state("idle")
    assert caught.value.code == FAILED, caught.value
    assert rig.daemon.poll() is None
    return caught.value.params[1]


def xapi(rig, outcome):
    try:
        rig.snapshot(status_timeout=20.0)
    except XapiError as error:
        outcome["error"] = error


def test_hostile_values_are_clear_errors_and_nothing_is_frozen(rig):
    seed = figures.SEED
    chance = random.Random(seed)
    rig.start(failure="F13", max_frozen=8)
    requests = 0
    for key in REQUEST_KEYS:
        path = path_of(rig, key)
        original = rig.client.read_bytes(path)
        for _ in range(PER_KEY):
            rig.client.write_bytes(path, hostile(chance))
            message = refused(rig)
            assert all(" " <= ch <= "~" for ch in message), message
            requests += 1
        rig.client.write_bytes(path, original)
    # V missing, V another guest's, V dom0's: refused before anything freezes
    other = "/vss/" + str(uuid.uuid4())
    rig.client.mkdir(other)
    rig.client.set_perms(other, ["n8"])
    for vss, words in ((None, "does not exist"), (other, "belongs to domain 8")):
        if vss is None:
            rig.client.rm(rig.vss)
        else:
            plant(rig, "vss", vss.encode())
        assert words in refused(rig)
        requests += 1
    plant(rig, "vss", rig.vss.encode())
    rig.client.mkdir(rig.vss)
    rig.client.set_perms(rig.vss, ["n0"])
    assert "belongs to domain 0" in refused(rig)
    rig.client.set_perms(rig.vss, ["n{}".format(rig.sim.domid)])
    requests += 1
    assert rig.probes == [] and rig.last_session() is None  # no session ever started
    figures.count("hostile xenstore values: bad requests refused, nothing frozen", requests)

    # garbage from "snapwatchd" while frozen: thawed, then the error
    for _ in range(STATUSES):
        outcome = {}
        caller = threading.Thread(target=xapi, args=(rig, outcome))
        caller.start()
        wait_until(lambda: rig.client.read_or(rig.vss + "/status") == "create-snapshots",
                   10, "create-snapshots")
        rig.client.write_bytes(rig.vss + "/status", hostile(chance))
        caller.join(30)
        assert outcome["error"].code == FAILED
        rig.wait_state("idle")
        assert rig.frozen_now() == [False, False]
        assert rig.last_session()["result"] in ("thawed", "deadline-thawed")
    figures.count("hostile xenstore values: garbage V/status while frozen, thawed", STATUSES)
    assert "Traceback" not in rig.log()
