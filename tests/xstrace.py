"""Read a C xenstored `-T` trace: who changed what, in the daemon's own order.

xenstored handles one request at a time, so the order of `IN` lines is the order in
which the store changed. Each connection is labelled with the role that used it,
recognised by a key only that role writes.
"""
import re

LINE = re.compile(r"^IN (0x[0-9a-f]+) \d+ [\d:]+ (WRITE|RM|MKDIR|SET_PERMS) \((.*)\)$")


def changes(trace_path):
    """[(connection, op, path, value)] for every request that changes the store."""
    result = []
    with open(trace_path, errors="replace") as handle:
        for line in handle:
            match = LINE.match(line.rstrip("\n"))
            if not match:
                continue
            conn, op, args = match.groups()
            path, _, rest = args.partition(" ")
            value = rest if op == "WRITE" else None
            result.append((conn, op.lower(), path, value))
    return result


def by_role(trace_path, home, vss):
    """changes() with each connection replaced by its role name."""
    signatures = [("guest", home + "/data/xe-quiesce/state"),
                  ("xapi", home + "/control/snapshot/action"),
                  ("snapwatchd", vss + "/snaptype"),
                  ("xenopsd", home + "/vss")]
    ops = changes(trace_path)
    roles = {}
    for conn, op, path, _ in ops:
        for role, key in signatures:
            if op == "write" and path == key and conn not in roles:
                roles[conn] = role
    return [(roles.get(conn, "other"), op, path, value) for conn, op, path, value in ops]
