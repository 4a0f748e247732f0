"""The facts guest and dom0 share: xenstore keys, status values, error codes, trigger names.

Why one module: the guest's conversation (triggers/conversation.py) and dom0's roles
(host/) speak the same contract (docs/xapi-protocol.md, section a); a value spelt in two
places drifts, and the host RPM ships this module without the guest's code.
Paths: `D` the guest's home, `C` = `D/control/snapshot`, `V` = the value of `D/vss`.
"""
import re

# -- who asked for a session (the journal's and `xe-quiesce status`'s `trigger`) -------
XAPI = "xapi"
CLI = "cli"
XO = "xo"

# -- keys under D ----------------------------------------------------------------------
SNAPSHOT_DIR = "control/snapshot"            # C
FEATURE_QUIESCE = "control/feature-quiesce"  # "1": the guest takes quiesced snapshots
FEATURE_SNAPSHOT = "control/feature-snapshot"  # the same, as the Windows tools say it
AGENT_STATE = "data/xe-quiesce/state"        # what dom0 sees of the agent's conversation
AGENT_VERSION = "data/xe-quiesce/version"

# -- values (contract section a) --------------------------------------------------------
CREATE_SNAPSHOT = "create-snapshot"          # C/action from xapi
CREATE_SNAPSHOTS = "create-snapshots"        # V/status to snapwatchd
CREATE_SNAPSHOTINFO = "create-snapshotinfo"  # V/status to snapwatchd (never sent by us)
SNAPSHOTS_CREATED = "snapshots-created"      # V/status from snapwatchd
SNAPSHOTS_FAILED = "snapshots-failed"
SNAPSHOT_CREATED = "snapshot-created"        # C/status to xapi
SNAPSHOT_ERROR = "snapshot-error"

# C/error/code values: short, stable, for scripts on the dom0 side.
ERR_BUSY = "busy"                  # another quiesce session runs
ERR_REQUEST = "bad-request"        # garbage or missing keys in vss, VBD or backend nodes
ERR_QUIESCE = "quiesce-failed"     # hooks or FIFREEZE failed (everything undone)
ERR_NOTHING = "nothing-frozen"     # no filesystem to freeze on the requested disks
ERR_TIMEOUT = "timeout"            # snapwatchd did not answer before the deadline
ERR_SNAPSHOTS = "snapshots-failed"  # snapwatchd answered snapshots-failed
ERR_STATUS = "unexpected-status"   # V/status changed to something else, or vanished
ERR_DEADLINE = "deadline-thawed"   # the guard thawed before the host's answer
ERR_NOT_VM = "not-whole-vm"        # V/snaptype is not `vm` (per-disk mode, F7)
ERR_RESULT = "bad-result"          # V/snapuuid missing or not a uuid
ERR_XENSTORE = "xenstore"          # a xenstore operation failed mid-conversation
ERR_STOPPED = "stopped"            # the agent was stopped while frozen
ERR_RESTARTED = "restarted"        # the agent died mid-request; its guard thawed

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")


def advertises(read):
    """Whether the guest takes quiesced snapshots (contract 1.2, xapi's check at execution
    time): feature-snapshot or feature-quiesce is "1". `read(key)` is the value of a key
    under D, or None."""
    return any(read(key) == "1" for key in (FEATURE_SNAPSHOT, FEATURE_QUIESCE))
