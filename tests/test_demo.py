"""`make demo`'s first part explains itself and its quiesced snapshot is clean."""
import re

from tests import demo


def test_demo_explains_and_the_quiesced_copies_are_clean(tmp_path, capsys):
    ok, closing = demo.freeze_and_copy(str(tmp_path))
    out = capsys.readouterr().out
    assert ok, out
    assert out.startswith("xe-quiesce demo: a snapshot of two busy filesystems")
    assert "stands for the host's snapshot" in out
    assert re.search(r"^  MOUNT POINT +FSTYPE +VBDS +BLOCK STACK$", out, re.M), out
    without, with_ = out.split(" without quiescing:\n")[1].split(" with quiescing:\n")
    assert len(re.findall(r"^   (ext4|xfs) +(CLEAN|NOT CLEAN): \d+ committed", without, re.M)) == 2
    assert len(re.findall(r"^   (ext4|xfs) +CLEAN: \d+ committed transfers, total 100000$",
                          with_, re.M)) == 2, with_
    assert "CLEAN means the copy needed no recovery of any kind" in out
    assert closing.startswith("Verdict: with xe-quiesce the snapshot restores as is")
