"""Consistency proof: copies taken while frozen, with a writer running, are clean."""
import os
import subprocess

from tests.consistency import Writer, check_copy
from xe_quiesce.core.session import QuiesceSession

CYCLES = 20


def copy_image(source, target):
    subprocess.run(["cp", "--sparse=always", source, target], check=True)


def test_copies_taken_while_frozen_are_consistent(loopfs, config_for, tmp_path):
    filesystems = [loopfs("ext4"), loopfs("xfs")]
    config = config_for([fs.mount_point for fs in filesystems])
    writers = [Writer(fs.mount_point) for fs in filesystems]
    seen_moves = {fs.fstype: [] for fs in filesystems}
    try:
        for cycle in range(CYCLES):
            session = QuiesceSession(config, "cli")
            session.start()
            try:
                copies = []
                for fs in filesystems:
                    copy = str(tmp_path / "{}-{}.img".format(fs.fstype, cycle))
                    copy_image(fs.image, copy)
                    copies.append((fs.fstype, copy))
            finally:
                assert session.thaw()["result"] == "thawed"
            for fstype, copy in copies:
                problems, moves = check_copy(copy, fstype)
                assert problems == [], "cycle {} {}: {}".format(cycle, fstype, problems)
                seen_moves[fstype].append(moves)
                os.unlink(copy)
    finally:
        for writer in writers:
            writer.stop()
    for fstype, moves in seen_moves.items():
        assert moves == sorted(moves) and moves[-1] > moves[0], (
            "the {} writer must have kept committing between snapshots: {}".format(
                fstype, moves))
