"""mountinfo parsing: escapes, optional fields, devices, ids."""
import pytest

from xe_quiesce.linux.mountinfo import MountinfoError, is_read_only, parse_line, parse_mountinfo

LINES = r"""
22 1 202:1 / / rw,relatime shared:1 - ext4 /dev/xvda1 rw,errors=remount-ro
35 22 202:1 /srv/data /mnt/with\040space\134x rw shared:5 master:1 - ext4 /dev/xvda1 rw
36 22 0:40 / /mnt/btr rw,relatime - btrfs /dev/xvdb rw,space_cache=v2,subvolid=5,subvol=/
37 22 202:17 / /ro ro,relatime - xfs /dev/xvdb1 ro
"""


def test_fields():
    first, bind, btrfs, readonly = parse_mountinfo(LINES)
    assert (first.mount_id, first.parent_id, first.major, first.minor) == (22, 1, 202, 1)
    assert first.optional_fields == ("shared:1",) and first.super_options[0] == "rw"
    assert bind.mount_point == "/mnt/with space\\x" and bind.root == "/srv/data"
    assert bind.optional_fields == ("shared:5", "master:1")
    assert (btrfs.major, btrfs.minor, btrfs.source) == (0, 40, "/dev/xvdb")
    assert is_read_only(readonly) and not is_read_only(first)


@pytest.mark.parametrize("line", ["", "22 1 202:1 / /", "x 1 202:1 / / rw - ext4 /dev/a rw",
                                  "22 1 2021 / / rw - ext4 /dev/a rw"])
def test_malformed(line):
    with pytest.raises(MountinfoError):
        parse_line(line)
