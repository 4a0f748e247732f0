"""The guest's part of the quiesce contract, as a state machine with no I/O.

Why a pure machine: the contract (docs/xapi-protocol.md) is a strict sequence of
xenstore keys, values and orderings, with a failure path at every step, and the real
dom0 gives no second chance (xapi takes the *first* `C/status` value as final). Keeping
the decisions here, and the xenstore/freeze calls in `triggers/xapi.py`, lets every
transition and every failure path be tested without xenstored or a filesystem.

`Conversation.handle(event)` takes one event (what the adapter saw or what a command
returned) and returns the commands to run, in order. A command that produces a
result (`ReadVss`, `ReadVbds`, `StartSession`, `Thaw`, `ReadResult`) is always the
last of its batch; the adapter feeds its result back as the next event. If a xenstore
command fails, the adapter drops the rest of the batch and feeds `IoFailed`.

Paths: `D` the guest's home, `C` = `D/control/snapshot`, `V` = the value of `D/vss`.
This machine never asks for `create-snapshotinfo` (contract section e.1).

The host must get its answer even if the agent is killed at any step: the request is
journaled (`Record`) before `C/action` is deleted, and the answer's keys before the
first of them is written. After a restart `recover()` answers a host that still waits:
with the journaled answer if there is one, else `restarted`. xapi takes the first
`C/status` as final, so a host that has a status is never answered again.
"""
import collections
import json
import logging
import re

from ..core.record import DEADLINE_THAWED, THAWED
from ..protocol import (
    CREATE_SNAPSHOT,
    CREATE_SNAPSHOTS,
    ERR_BUSY,
    ERR_DEADLINE,
    ERR_NOT_VM,
    ERR_NOTHING,
    ERR_REQUEST,
    ERR_RESTARTED,
    ERR_RESULT,
    ERR_SNAPSHOTS,
    ERR_STATUS,
    ERR_STOPPED,
    ERR_TIMEOUT,
    ERR_XENSTORE,
    SNAPSHOT_CREATED,
    SNAPSHOT_ERROR,
    SNAPSHOTS_CREATED,
    SNAPSHOTS_FAILED,
    UUID_RE,
)

# -- states -------------------------------------------------------------------------
IDLE = "idle"                # waiting for C/action
RESOLVING = "resolving"      # action deleted, reading D/vss
LISTING = "listing"          # reading the VBDs and their VDIs
QUIESCING = "quiescing"      # V/snapshot prepared, the session is freezing
FROZEN = "frozen"            # V/status = create-snapshots, waiting for snapwatchd
THAWING = "thawing"          # thawing, then report
COLLECTING = "collecting"    # thawed after snapshots-created, reading V's result
STOPPED = "stopped"          # SIGTERM handled; the adapter exits

# Values published in D/data/xe-quiesce/state (what dom0 sees of the agent).
PUBLISHED = {IDLE: "idle", RESOLVING: "quiescing", LISTING: "quiescing",
             QUIESCING: "quiescing", FROZEN: "frozen", THAWING: "thawing",
             COLLECTING: "thawing"}

# -- limits of the contract's values (section a; the values are protocol.py's) ---------
SNAPID_CHUNK = 1020                          # characters per C/snapid/<n> (as Windows)
ERROR_MAX = 1000                             # characters of C/error

VSS_RE = re.compile(r"^/vss/([0-9a-fA-F-]{36})$")
DEVID_RE = re.compile(r"^[0-9]{1,10}$")
XS_PATH_RE = re.compile(r"^(/[A-Za-z0-9_@-]+)+$")

# -- events (in) ------------------------------------------------------------------------
ActionSeen = collections.namedtuple("ActionSeen", "value")       # C/action, None if absent
# D/vss (None: absent); `owner`: the domid owning V ("" V absent, None V not looked up)
VssRead = collections.namedtuple("VssRead", "value error owner")
VbdNode = collections.namedtuple("VbdNode", "devid device_type backend vdi_uuid error")
VbdsRead = collections.namedtuple("VbdsRead", "vbds")            # list of VbdNode
QuiesceOk = collections.namedtuple("QuiesceOk", "summary filesystems")
QuiesceFailed = collections.namedtuple("QuiesceFailed", "code message")
StatusSeen = collections.namedtuple("StatusSeen", "value")       # V/status, None if absent
Timeout = collections.namedtuple("Timeout", "")                  # the session deadline
Thawed = collections.namedtuple("Thawed", "summary")
ResultRead = collections.namedtuple("ResultRead", "snaptype snapuuid snapshot_ids")
HomeChanged = collections.namedtuple("HomeChanged", "feature unique_domain_id")
Reconnected = collections.namedtuple("Reconnected", "")
Stop = collections.namedtuple("Stop", "")
IoFailed = collections.namedtuple("IoFailed", "message")

# -- commands (out) -----------------------------------------------------------------
Write = collections.namedtuple("Write", "path value")
Rm = collections.namedtuple("Rm", "path")
Log = collections.namedtuple("Log", "level message")
Publish = collections.namedtuple("Publish", "state")          # best effort
Advertise = collections.namedtuple("Advertise", "")           # best effort
Unadvertise = collections.namedtuple("Unadvertise", "")       # best effort, at stop
ReadVss = collections.namedtuple("ReadVss", "")
ReadVbds = collections.namedtuple("ReadVbds", "")
StartSession = collections.namedtuple("StartSession", "vbds")  # devids of the request
AwaitStatus = collections.namedtuple("AwaitStatus", "path")   # watch V/status until left
Thaw = collections.namedtuple("Thaw", "")
ReadResult = collections.namedtuple("ReadResult", "vss vdis")
Exit = collections.namedtuple("Exit", "")
# The request journal: {"control": C, "report": [[op, path, value?], ...] or None};
# None: the request is over (answered or given up).
Record = collections.namedtuple("Record", "request")


class RequestError(Exception):
    """A key of the request (vss, VBD, backend) holds garbage; nothing was frozen."""


def printable(text, limit=ERROR_MAX):
    """Text as a xenstore value: printable ASCII only, bounded (pyxs and xenbus limits)."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(str(text).split()))
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 3] + "..."


def parse_vss(value, error=None, owner=None, domid=None):
    """V from the `vss` key: exactly `/vss/<vm-uuid>` (contract 0.2), else RequestError.

    `error` says why the value could not be read as text (garbage bytes). `owner` is
    the domid owning V ("" when V does not exist): V must be this guest's (`domid`),
    or snapwatchd, which watches only V, would never see the request (contract 0.1).
    """
    if error:
        raise RequestError("the key vss: {}".format(error))
    if value is None:
        raise RequestError("the key vss is missing: this host's toolstack does not take "
                           "quiesced snapshots (XCP-ng 8.1+/XenServer 8 without the "
                           "xe-quiesce host companion)")
    match = VSS_RE.match(value)
    if not match or not UUID_RE.match(match.group(1)):
        raise RequestError("the key vss holds {!r}, expected /vss/<vm-uuid>".format(
            printable(value, 80)))
    if owner == "":
        raise RequestError("the key vss names {}, which does not exist".format(value))
    if domid is not None and owner != str(domid):
        raise RequestError("the key vss names {}, which belongs to {}, not to this guest "
                           "(domain {})".format(value, "domain " + printable(owner, 20)
                                                if owner else "another domain", domid))
    return value


def select_disks(vbds):
    """The disk VBDs of the request as [(devid, vdi-uuid)], CD-ROMs left out.

    Every node is checked: one bad value makes the whole request a clear error, as a
    partial list would switch snapwatchd to per-disk mode (contract F7, section e.4).
    """
    disks, seen = [], {}
    for node in sorted(vbds, key=lambda n: (len(n.devid), n.devid)):
        where = "device/vbd/{}".format(printable(node.devid, 40))
        if node.error:
            raise RequestError("{}: {}".format(where, node.error))
        if not DEVID_RE.match(node.devid):
            raise RequestError("{}: the device id is not a number".format(where))
        if node.device_type == "cdrom":
            continue
        if node.device_type is None:
            raise RequestError("{}/device-type is missing".format(where))
        if node.device_type != "disk":
            raise RequestError("{}/device-type is {!r}, expected disk or cdrom".format(
                where, printable(node.device_type, 40)))
        if node.backend is None:
            raise RequestError("{}/backend is missing".format(where))
        if not XS_PATH_RE.match(node.backend):
            raise RequestError("{}/backend is {!r}, not a xenstore path".format(
                where, printable(node.backend, 80)))
        if node.vdi_uuid is None:
            raise RequestError("{}/sm-data/vdi-uuid is missing: the VDI of disk {} is "
                               "unknown".format(node.backend, node.devid))
        if not UUID_RE.match(node.vdi_uuid):
            raise RequestError("{}/sm-data/vdi-uuid is {!r}, not a uuid".format(
                node.backend, printable(node.vdi_uuid, 80)))
        vdi = node.vdi_uuid.lower()
        if vdi in seen:
            raise RequestError("VDI {} is on two VBDs ({} and {})".format(
                vdi, seen[vdi], node.devid))
        seen[vdi] = node.devid
        disks.append((node.devid, vdi))
    if not disks:
        raise RequestError("no disk VBD under device/vbd: nothing to snapshot")
    return disks


def snapid_chunks(manifest):
    """The manifest as JSON, ASCII only, cut into C/snapid/<n> chunks (contract 3.4)."""
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return [text[i:i + SNAPID_CHUNK] for i in range(0, len(text), SNAPID_CHUNK)]


class Conversation(object):
    """One guest's side of the contract; `state` is one of the state names above."""

    def __init__(self, domain_path, version=""):
        self.domain_path = domain_path.rstrip("/")
        self.control = self.domain_path + "/control/snapshot"
        match = re.match(r"^/local/domain/([0-9]+)$", self.domain_path)
        self.domid = int(match.group(1)) if match else None
        self.version = version
        self.state = IDLE
        self.published = PUBLISHED[IDLE]
        self.ignored_action = None
        self.unique_domain_id = None
        self._reset()

    def _reset(self):
        self.vss = None
        self.disks = []
        self.frozen = False
        self.filesystems = []
        self.session = None
        self.thaw_summary = None
        self.pending_error = None
        self.answered = False
        self.stopping = False

    # -- dispatch -----------------------------------------------------------------------

    def handle(self, event):
        name = TRANSITIONS.get((self.state, type(event))) or ANY_STATE.get(type(event))
        if name is None:
            return [Log(logging.DEBUG, "ignored {} in state {}".format(
                type(event).__name__, self.state))]
        return getattr(self, name)(event)

    def _to(self, state):
        """Enter `state`; publish it when dom0's view (idle, quiescing, ...) changes."""
        self.state = state
        shown = PUBLISHED.get(state)
        if shown is None or shown == self.published:
            return []
        self.published = shown
        return [Publish(shown)]

    # -- the request ------------------------------------------------------------------

    def on_action(self, event):
        """IDLE: `create-snapshot` starts a conversation; anything else is left alone."""
        if event.value is None:
            self.ignored_action = None
            return []
        if event.value != CREATE_SNAPSHOT:
            if event.value == self.ignored_action:
                return []
            self.ignored_action = event.value
            return [Log(logging.WARNING, "unknown {}/action value {!r} left alone".format(
                self.control, printable(event.value, 80)))]
        self._reset()
        self.ignored_action = None
        # Deleting the key is the acknowledgement xapi waits 60 s for (contract 1.5);
        # journaled first, so that a crash after it still answers the host.
        return [self._record(None), Rm(self.control + "/action"),
                Log(logging.INFO, "quiesce requested by the host")] + self._to(
                    RESOLVING) + [ReadVss()]

    def on_action_busy(self, event):
        """A request while one runs: answered `snapshot-error` (busy), never queued."""
        if event.value is None:
            return []
        if event.value != CREATE_SNAPSHOT:
            return self.on_action(event)
        message = "busy: a quiesced snapshot of this guest is already in progress"
        answer = self._error_keys(ERR_BUSY, message)
        commands = [self._record(answer), Rm(self.control + "/action"),
                    Log(logging.WARNING, message)] + answer
        # xapi reads the first status value only; this session's own result can no
        # longer be delivered through C.
        self.answered = True
        return commands

    def on_vss(self, event):
        try:
            self.vss = parse_vss(event.value, event.error, event.owner, self.domid)
        except RequestError as error:
            return self._fail(ERR_REQUEST, str(error))
        return self._to(LISTING) + [ReadVbds()]

    def on_vbds(self, event):
        try:
            self.disks = select_disks(event.vbds)
        except RequestError as error:
            return self._fail(ERR_REQUEST, str(error))
        commands = [Rm(self.vss + "/" + key) for key in CLEANED]
        # One empty node per disk VDI: the set snapwatchd counts (contract 2.4, 2.11).
        commands += [Write("{}/snapshot/{}".format(self.vss, vdi), "") for _, vdi in self.disks]
        commands += self._to(QUIESCING)
        commands.append(StartSession([devid for devid, _ in self.disks]))
        return commands

    def on_quiesce_ok(self, event):
        self.frozen = True
        self.session = event.summary
        self.filesystems = list(event.filesystems)
        if not event.summary.get("frozen"):
            return self._fail(ERR_NOTHING, "no filesystem of the requested disks could be "
                                           "frozen; refusing a snapshot that is not quiesced")
        return self._to(FROZEN) + [
            Write(self.vss + "/status", CREATE_SNAPSHOTS),
            Log(logging.INFO, "frozen {}; snapshot requested from the host".format(
                " ".join(event.summary["frozen"]))),
            AwaitStatus(self.vss + "/status")]

    def on_quiesce_failed(self, event):
        return self._fail(event.code, event.message)

    # -- waiting for snapwatchd -------------------------------------------------------

    def on_status(self, event):
        value = event.value
        if value == CREATE_SNAPSHOTS:
            return []  # our own request, echoed by the watch
        if value == SNAPSHOTS_CREATED:
            return self._to(THAWING) + [Thaw()]
        if value == SNAPSHOTS_FAILED:
            return self._fail(ERR_SNAPSHOTS, "the host failed to take the snapshot "
                                             "(snapwatchd: snapshots-failed)")
        if value is None:
            return self._fail(ERR_STATUS, "{}/status vanished while waiting for the host "
                              "(xenstore restarted, or the domain was rebuilt)".format(self.vss))
        return self._fail(ERR_STATUS, "unexpected {}/status value {!r} while waiting for "
                          "snapshots-created".format(self.vss, printable(value, 80)))

    def on_timeout(self, event):
        return self._fail(ERR_TIMEOUT, "the host did not take the snapshot before the "
                          "session deadline (snapwatchd absent or silent); thawed")

    def on_stop_frozen(self, event):
        self.stopping = True
        return self._fail(ERR_STOPPED, "the guest agent was stopped while frozen; thawed")

    # -- thaw and report -------------------------------------------------------------------

    def on_thawed(self, event):
        self.frozen = False
        self.thaw_summary = event.summary
        if self.pending_error:
            return self._report_error(*self.pending_error)
        result = event.summary.get("result")
        if result == DEADLINE_THAWED:
            return self._report_error(ERR_DEADLINE, "the deadline guard thawed the "
                                      "filesystems before the host had finished; the host's "
                                      "snapshot is not quiesced")
        commands = []
        if result != THAWED:
            commands.append(Log(logging.ERROR, "thaw problems after the snapshot: {}".format(
                event.summary.get("message"))))
        self.state = COLLECTING
        return commands + [ReadResult(self.vss, [vdi for _, vdi in self.disks])]

    def on_result(self, event):
        if event.snaptype != "vm":
            return self._report_error(ERR_NOT_VM, "the host took per-disk snapshots (V/snaptype "
                                      "{!r}, not 'vm'): the request did not cover every disk of "
                                      "the VM".format(printable(event.snaptype or "", 40)))
        if not event.snapuuid or not UUID_RE.match(event.snapuuid):
            return self._report_error(ERR_RESULT, "{}/snapuuid is {!r}, not a snapshot uuid"
                                      .format(self.vss, printable(event.snapuuid or "", 80)))
        commands = [Write(self.control + "/snapuuid", event.snapuuid),
                    Rm(self.control + "/snapid")]
        chunks = snapid_chunks(self.manifest(event))
        commands += [Write("{}/snapid/{}".format(self.control, n), chunk)
                     for n, chunk in enumerate(chunks)]
        commands.append(Write(self.control + "/status", SNAPSHOT_CREATED))
        commands.insert(0, self._record(commands))
        if self.answered:
            commands = [Log(logging.WARNING, "snapshot {} was taken but not reported: the "
                            "request area was answered 'busy' meanwhile".format(event.snapuuid))]
        else:
            commands.append(Log(logging.INFO, "quiesced snapshot {} created".format(
                event.snapuuid)))
        return commands + self._finish()

    def manifest(self, result):
        """What was frozen, for C/snapid (stored by xapi as transportable_snapshot_id)."""
        session, thaw = self.session or {}, self.thaw_summary or {}
        return {
            "agent": "xe-quiesce", "version": self.version,
            "session": session.get("session"),
            "frozen": list(thaw.get("frozen") or session.get("frozen") or []),
            "filesystems": self.filesystems,
            "window_seconds": thaw.get("window_seconds"),
            "hooks": list(session.get("hooks") or []),
            "vdis": {devid: vdi for devid, vdi in self.disks},
            "snapshot_vdis": dict(result.snapshot_ids),
            "snapuuid": result.snapuuid,
        }

    def recover(self, request, vss, host_waiting):
        """Commands after a restart that cut a request off (the journal says so).

        `request` is the journaled record (None: only the session journal knew). V may
        still say create-snapshots, which a returning snapwatchd would act on with the
        guest thawed: clear it. The host may still wait on C for a first status: answer
        it now, with the answer journaled before the crash if there was one, rather than
        let it wait out its 600 s.
        """
        commands = [Log(logging.WARNING, "a snapshot request was cut off by the agent's "
                        "restart; clearing its keys")]
        if vss:
            commands += [Rm(vss + "/" + key) for key in CLEANED]
        report = (request or {}).get("report")
        if host_waiting and report:
            commands.append(Log(logging.WARNING, "answering the host with the result "
                                "journaled before the restart"))
            commands += [Write(op[1], op[2]) if op[0] == "write" else Rm(op[1])
                         for op in report]
        elif host_waiting:
            commands += self._error_keys(ERR_RESTARTED, "the guest agent restarted during "
                                         "this request; its deadline guard thawed the guest")
        return commands + [Record(None)]

    def _record(self, answer):
        """The request journal's entry; `answer`: the commands that will answer C."""
        report = None
        if answer is not None:
            report = [["write", c.path, c.value] if isinstance(c, Write) else ["rm", c.path]
                      for c in answer if isinstance(c, (Write, Rm))]
        return Record({"control": self.control, "report": report})

    def _fail(self, code, message):
        """Any failure: thaw first if frozen, then report."""
        if self.frozen:
            self.pending_error = (code, message)
            return [Log(logging.ERROR, message)] + self._to(THAWING) + [Thaw()]
        return self._report_error(code, message)

    def _error_keys(self, code, message):
        # C/error must exist before the status, or xapi answers INTERNAL_ERROR (F5).
        return [Write(self.control + "/error", printable(message)),
                Write(self.control + "/error/code", code),
                Write(self.control + "/status", SNAPSHOT_ERROR)]

    def _report_error(self, code, message):
        commands = [Log(logging.ERROR, "quiesced snapshot failed ({}): {}".format(code, message))]
        if self.answered:
            commands.append(Log(logging.WARNING, "not reported to the host: the request area "
                                "was already answered 'busy'"))
        else:
            answer = self._error_keys(code, message)
            commands += [self._record(answer)] + answer
        return commands + self._finish()

    def _finish(self):
        commands = [Rm(self.vss + "/" + key) for key in CLEANED] if self.vss else []
        commands.append(Record(None))  # after V is clean: a restart before cleans it
        if self.stopping:
            self.state = STOPPED
            return commands + [Unadvertise(), Exit()]
        return commands + self._to(IDLE)

    # -- any state ----------------------------------------------------------------------

    def on_home(self, event):
        """Advertise again when the feature key is gone or the domain is new (resume,
        migration: `unique-domain-id` changes)."""
        changed = (self.unique_domain_id is not None
                   and event.unique_domain_id != self.unique_domain_id)
        self.unique_domain_id = event.unique_domain_id
        if event.feature != "1" or changed:
            return [Advertise()]
        return []

    def on_reconnected(self, event):
        return [Log(logging.INFO, "xenstore connection re-established; advertising again"),
                Advertise()]

    def on_stop_idle(self, event):
        self.state = STOPPED
        return [Unadvertise(), Exit()]

    def on_io_failed(self, event):
        if self.state in (IDLE, STOPPED):
            return [Log(logging.ERROR, "xenstore: {}".format(event.message))]
        return self._fail(ERR_XENSTORE, "xenstore operation failed: {}".format(event.message))

    def on_io_failed_reporting(self, event):
        """Reading the result failed after the thaw: report that, if C is reachable."""
        return self._report_error(ERR_XENSTORE, "cannot read the host's result: {}".format(
            event.message))


# V's keys the guest clears before a request and after it (contract 2.2, 2.20, e.10).
CLEANED = ("snapshot", "snapinfo", "snapuuid", "snaptype", "status")

BUSY_STATES = (RESOLVING, LISTING, QUIESCING, FROZEN, THAWING, COLLECTING)

TRANSITIONS = {
    (IDLE, ActionSeen): "on_action",
    (RESOLVING, VssRead): "on_vss",
    (LISTING, VbdsRead): "on_vbds",
    (QUIESCING, QuiesceOk): "on_quiesce_ok",
    (QUIESCING, QuiesceFailed): "on_quiesce_failed",
    (FROZEN, StatusSeen): "on_status",
    (FROZEN, Timeout): "on_timeout",
    (FROZEN, Stop): "on_stop_frozen",
    (THAWING, Thawed): "on_thawed",
    (COLLECTING, ResultRead): "on_result",
    (COLLECTING, IoFailed): "on_io_failed_reporting",
    (IDLE, Stop): "on_stop_idle",
}
TRANSITIONS.update({(state, ActionSeen): "on_action_busy" for state in BUSY_STATES})

ANY_STATE = {
    HomeChanged: "on_home",
    Reconnected: "on_reconnected",
    IoFailed: "on_io_failed",
}
