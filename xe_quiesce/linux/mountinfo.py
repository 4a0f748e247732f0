"""Parse /proc/self/mountinfo, the only mount table that names each superblock.

psutil and /proc/mounts give neither `major:minor` nor the mount ids, so they cannot tell
a bind mount from a second filesystem; freezing one superblock twice answers EBUSY.
"""
import collections
import os
import re

MountEntry = collections.namedtuple(
    "MountEntry",
    "mount_id parent_id major minor root mount_point mount_options optional_fields "
    "fstype source super_options",
)



def devno_of(major, minor):
    """A filesystem's name in the plan and the journal: "major:minor", as mountinfo
    spells it (the only key that tells two mounts of one superblock apart from two
    filesystems)."""
    return "{}:{}".format(major, minor)


_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field):
    """Undo the kernel's octal escapes (\\040 for a space, \\134 for a backslash...)."""
    return _OCTAL.sub(lambda match: chr(int(match.group(1), 8)), field)


class MountinfoError(ValueError):
    """A mountinfo line that does not have the documented shape."""


def parse_line(line):
    fields = line.split(" ")
    try:
        separator = fields.index("-", 6)
        major, minor = fields[2].split(":")
        return MountEntry(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            major=int(major),
            minor=int(minor),
            root=unescape(fields[3]),
            mount_point=unescape(fields[4]),
            mount_options=tuple(fields[5].split(",")),
            optional_fields=tuple(fields[6:separator]),
            fstype=unescape(fields[separator + 1]),
            source=unescape(fields[separator + 2]),
            super_options=tuple(fields[separator + 3].split(",")),
        )
    except (ValueError, IndexError):
        raise MountinfoError("malformed mountinfo line: {!r}".format(line))


def parse_mountinfo(text):
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read_mountinfo(root="/"):
    with open(os.path.join(root, "proc/self/mountinfo")) as handle:
        return parse_mountinfo(handle.read())


def is_read_only(entry):
    return "ro" in entry.mount_options or "ro" in entry.super_options
