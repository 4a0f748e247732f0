"""A session's cancel points, in process on loop filesystems (the XO trigger's safety).

The moment the asker leaves is chosen by a Cancel that gives its reason once the
session reached a given point (a hook ran, the filesystems are frozen), so each case is
deterministic where a real client's timing could not be.
"""
import pytest

from testbed.loopfs import is_frozen
from tests.core.test_hooks import Bed
from xe_quiesce.core.cancel import AbandonedError, Cancel
from xe_quiesce.core.session import QuiesceSession

REASON = "Xen Orchestra stopped waiting after 1.0 s"


class CancelWhen(Cancel):
    """Gives REASON from the first look at which `condition()` holds."""

    def __init__(self, condition):
        Cancel.__init__(self)
        self.condition = condition

    def reason(self):
        if self.condition():
            self.set(REASON)
        return Cancel.reason(self)


@pytest.fixture
def bed(tmp_path):
    return Bed(tmp_path)


def abandoned(config, condition):
    """Start a session whose cancel fires on `condition(session)`; the session and the
    AbandonedError's message."""
    session = QuiesceSession(config, "xo")
    session.cancel = CancelWhen(lambda: condition(session))
    with pytest.raises(AbandonedError) as error:
        session.start()
    assert session.state["result"] == "abandoned"
    assert session.state["message"].startswith(REASON)
    return session, str(error.value)


def test_cancel_once_frozen_thaws_and_aborts_the_hooks(bed, loopfs, config_for):
    fs = loopfs("ext4")
    bed.hook("10-a")
    config = config_for([fs.mount_point], extra=bed.section())
    session, _ = abandoned(config, lambda s: bool(s.freezer and s.freezer.frozen()))
    assert session.freezer.states[0].freeze_start is not None, "it had frozen"
    assert not is_frozen(fs.mount_point)
    assert bed.calls() == ["10-a freeze", "10-a abort"]


def test_cancel_before_the_freeze_freezes_nothing(loopfs, config_for):
    fs = loopfs("ext4")
    session, message = abandoned(config_for([fs.mount_point]), lambda s: True)
    assert session.freezer is None, "no FIFREEZE was attempted"
    assert message == REASON
    assert not is_frozen(fs.mount_point)


def test_cancel_between_hooks_runs_no_further_hook(bed, loopfs, config_for):
    fs = loopfs("ext4")
    bed.hook("10-a")
    bed.hook("20-b")
    config = config_for([fs.mount_point], extra=bed.section())
    # Once 10-a's freeze has succeeded (not while it runs: that would stop it).
    session, message = abandoned(config, lambda s: any(r.ok for r in s.hooks.results))
    assert bed.calls() == ["10-a freeze", "10-a abort"]
    assert "before hook 20-b could run freeze" in message
    assert session.freezer is None and not is_frozen(fs.mount_point)
