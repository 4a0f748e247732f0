"""The rcu_expedited knob's rules, on a knob file under a private root (the real one is
system-wide; tests/core/test_freeze_engine.py drives it through real sessions)."""
import os

from xe_quiesce.linux import rcu
from xe_quiesce.linux.rcu import KNOB, ExpeditedRcu


def knob(tmp_path, value):
    path = tmp_path / KNOB
    path.parent.mkdir(parents=True)
    path.write_text(value + "\n")
    return path


def test_a_free_knob_is_set_for_the_freeze_and_put_back(tmp_path):
    path = knob(tmp_path, "0")
    expedited = ExpeditedRcu(root=str(tmp_path))
    assert expedited.ours
    expedited.engage()
    assert path.read_text() == "1"
    expedited.release()
    assert path.read_text() == "0"
    expedited.release()  # twice is once
    assert path.read_text() == "0"


def test_an_admins_1_is_left_alone(tmp_path):
    path = knob(tmp_path, "1")
    expedited = ExpeditedRcu(root=str(tmp_path))
    assert not expedited.ours
    expedited.engage()
    expedited.release()
    assert path.read_text() == "1\n"


def test_not_wanted_the_knob_is_not_touched(tmp_path):
    path = knob(tmp_path, "0")
    expedited = ExpeditedRcu(wanted=False, root=str(tmp_path))
    assert not expedited.ours
    expedited.engage()
    assert path.read_text() == "0\n"


def test_a_kernel_without_the_knob_is_no_failure(tmp_path):
    expedited = ExpeditedRcu(root=str(tmp_path))
    assert not expedited.ours
    expedited.engage()
    expedited.release()
    assert not os.path.exists(str(tmp_path / KNOB))


def test_a_refused_write_engages_nothing(tmp_path):
    """The kernel refusing the 1 (EINVAL, EPERM...) leaves nothing to put back."""
    path = knob(tmp_path, "0")
    expedited = ExpeditedRcu(root=str(tmp_path))
    path.unlink()
    path.mkdir()  # opening a directory for writing fails, as a refused sysfs write does
    expedited.engage()
    assert expedited.ours and not expedited.engaged


def test_restore_writes_the_0_back(tmp_path):
    path = knob(tmp_path, "1")
    rcu.restore(str(path))
    assert path.read_text() == "0"
