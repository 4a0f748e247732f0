"""core/slot.py, the daemon's one-session rule: one session at a time whichever trigger
asks, and who may end whose (THAW_POLICY).

The policy is pure, so its whole table is walked over stand-in sessions; that a second
trigger is refused while a real session holds real filesystems frozen is shown on loop
filesystems, the XAPI trigger's session (begun and ended by its conversation) included.
"""
import functools
import json
import os
import time

import pytest

from testbed.loopfs import is_frozen
from xe_quiesce.core.session import QuiesceSession
from xe_quiesce.core.slot import THAW_POLICY, UNSEEN, SessionSlot
from xe_quiesce.errors import BusyError
from xe_quiesce.linux import procs
from xe_quiesce.protocol import CLI, XAPI, XO

HOST_WAITS = "; the host's snapshot is waiting on it"


class StandIn(object):
    """A session that freezes nothing: what the slot sees of one (state, start, thaw)."""

    def __init__(self, trigger, plan=None):
        self.trigger = trigger
        self.session_id = "id-" + trigger
        self.state = None
        self.cancel = None
        self.thawed = False

    def start(self, timeout=None):
        self.state = {"session": self.session_id, "trigger": self.trigger,
                      "status": "frozen", "deadline": time.time() + 60}
        return {"result": "frozen"}

    def remaining(self):
        return 60.0

    def thaw(self):
        self.thawed = True
        return {"result": "thawed", "trigger": self.trigger}


def _started(slot, owner):
    """`owner`'s session in the slot as its trigger runs it: held, or begun (XAPI)."""
    if owner == XAPI:
        return slot.begin(XAPI)[0]
    slot.freeze(owner)
    return slot._session


@pytest.fixture
def slot(config_for):
    return SessionSlot(config_for([]), StandIn)


@pytest.mark.parametrize("owner", [XO, CLI, XAPI])
@pytest.mark.parametrize("asker", [XO, CLI, XAPI])
def test_a_second_session_is_refused_whoever_asks_and_whoever_holds(slot, asker, owner):
    first = _started(slot, owner)
    with pytest.raises(BusyError) as busy:
        _started(slot, asker)
    assert str(busy.value) == "a {0} session (id-{0}) is frozen; 60 s left before its " \
                              "deadline".format(owner)
    assert slot._session is first


def test_the_thaw_policy_table():
    """XO ends only its own and does not see the host's; the admin's CLI ends any but
    the one the host waits on."""
    assert THAW_POLICY == {
        (XO, XO): None, (XO, CLI): "it is not xo's to thaw", (XO, XAPI): UNSEEN,
        (CLI, CLI): None, (CLI, XO): None,
        (CLI, XAPI): "the host's snapshot is waiting on it"}


@pytest.mark.parametrize("asker, owner, outcome", [
    (XO, XO, "thawed"), (CLI, CLI, "thawed"), (CLI, XO, "thawed"),
    (XO, CLI, "; it is not xo's to thaw"), (CLI, XAPI, HOST_WAITS),
    (XO, XAPI, "nothing"),
])
def test_who_may_thaw_whose_session(slot, asker, owner, outcome):
    session = _started(slot, owner)
    if outcome == "thawed":
        assert slot.thaw(asker) == {"result": "thawed", "trigger": owner}
        assert session.thawed and slot._session is None
        return
    if outcome == "nothing":
        assert slot.thaw(asker) is None
    else:
        with pytest.raises(BusyError) as busy:
            slot.thaw(asker)
        assert str(busy.value).startswith("a {} session (id-{}) is frozen".format(owner, owner))
        assert str(busy.value).endswith(outcome)
    assert not session.thawed and slot._session is session


def test_the_held_trigger_is_xo_or_cli_never_the_hosts(slot):
    """`held_by_daemon` in status: the sessions the slot keeps between two requests."""
    assert slot.held_trigger() is None
    session = _started(slot, XAPI)
    assert slot.held_trigger() is None
    slot.end(session)
    slot.freeze(XO)
    assert slot.held_trigger() == XO
    slot.shutdown()
    assert slot.held_trigger() is None and slot._session is None


def test_a_session_that_fails_to_start_gives_the_slot_back(config_for):
    class Failing(StandIn):
        def start(self, timeout=None):
            raise BusyError("another process's session")

    slot = SessionSlot(config_for([]), Failing)
    for trigger in (XO, XAPI):
        with pytest.raises(BusyError):
            _started(slot, trigger)
        assert slot._session is None


def test_the_cli_does_not_thaw_the_hosts_session_from_the_journal(slot, config_for):
    """A XAPI session the slot does not hold (a daemon that died while its guard holds
    the freeze, say) is the journal's: the admin's thaw is refused there too."""
    run_dir = slot.config.state.run_dir
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "state.json"), "w") as handle:
        json.dump({"session": "s1", "trigger": XAPI, "status": "frozen",
                   "owner": procs.identity(os.getpid()), "deadline": time.time() + 30,
                   "mounts": []}, handle)
    with pytest.raises(BusyError) as busy:
        slot.thaw(CLI)
    assert str(busy.value).startswith("a xapi session (s1) is frozen")
    assert str(busy.value).endswith(HOST_WAITS)
    assert slot.thaw(XO) is None


@pytest.fixture
def real_slot(loopfs, config_for):
    filesystems = [loopfs("ext4"), loopfs("xfs")]
    config = config_for([fs.mount_point for fs in filesystems])
    slot = SessionSlot(config, functools.partial(QuiesceSession, config, hooks=False))
    yield slot, sorted(fs.mount_point for fs in filesystems)
    slot.shutdown()


def test_on_real_filesystems_a_held_freeze_makes_the_others_busy(real_slot):
    slot, mounts = real_slot
    assert sorted(slot.freeze(CLI)["frozen"]) == mounts
    assert [is_frozen(path) for path in mounts] == [True, True]
    for trigger in (XO, XAPI):
        with pytest.raises(BusyError) as busy:
            _started(slot, trigger)
        assert str(busy.value).startswith("a cli session (")
    with pytest.raises(BusyError) as busy:
        slot.thaw(XO)
    assert str(busy.value).endswith("; it is not xo's to thaw")
    assert [is_frozen(path) for path in mounts] == [True, True]
    assert slot.thaw(CLI)["result"] == "thawed"
    assert [is_frozen(path) for path in mounts] == [False, False]


def test_on_real_filesystems_the_hosts_session_makes_the_others_busy(real_slot):
    """The XAPI trigger's session is registered in the slot while its conversation runs
    it: XO and the CLI are refused a freeze, the CLI a thaw; XO sees nothing to thaw."""
    slot, mounts = real_slot
    session, summary = slot.begin(XAPI)
    assert sorted(summary["frozen"]) == mounts
    for trigger in (XO, CLI):
        with pytest.raises(BusyError) as busy:
            slot.freeze(trigger)
        assert str(busy.value).startswith("a xapi session ({}) is frozen".format(
            session.session_id))
    with pytest.raises(BusyError) as busy:
        slot.thaw(CLI)
    assert str(busy.value).endswith(HOST_WAITS)
    assert slot.thaw(XO) is None
    assert [is_frozen(path) for path in mounts] == [True, True]
    assert slot.end(session)["result"] == "thawed"
    assert [is_frozen(path) for path in mounts] == [False, False]
    assert sorted(slot.freeze(XO)["frozen"]) == mounts, "the slot is free again"
    assert slot.thaw(CLI)["result"] == "thawed", "the admin may end XO's"
    assert [is_frozen(path) for path in mounts] == [False, False]
