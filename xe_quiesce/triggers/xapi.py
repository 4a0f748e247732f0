"""The I/O adapter that drives `conversation.Conversation` over xenstore and a session.

It owns the xenstore client and the watches, and runs the QuiesceSession of a request
in the daemon's session slot (core/slot.py: the other triggers are busy meanwhile); the
decisions are the machine's. One thread does everything (the client is not thread
safe). It blocks in xenstore until an event, the session's deadline, the watchdog's
next beat, or a signal (SIGTERM/SIGINT wake it through a wake-up pipe): an idle agent
has no periodic wake-ups. While frozen it only talks to xenstore and logs through the
gate: no file is written.
"""
import logging
import os
import signal
import time

from .. import __version__
from .. import protocol as proto
from ..core.discovery import Skipped
from ..core.journal import Journal
from ..core.plan import FreezePlan
from ..core.session import make_plan
from ..errors import BusyError, QuiesceError
from ..linux.sdnotify import Watchdog, notify, watchdog_interval
from ..xenstore import (
    XenstoreError,
    XenstoreNotFound,
    XenstorePermissionError,
    XenstoreValueError,
)
from . import conversation as cv

LOG = logging.getLogger(__name__)
TOKENS = ("action", "feature", "domain", "status")


def plan_for(config, devids, plan=None):
    """The session's plan: the configured mounts, else the filesystems on these VBDs
    (of `plan`, the daemon's warm plan, or one made now)."""
    if plan is None:
        plan = make_plan(config)
    if config.freeze.mounts:
        return plan
    wanted = {int(devid) for devid in devids}
    keep = [fs for fs in plan.filesystems if wanted.intersection(fs.vbds)]
    left = [Skipped(fs.mount_point, fs.fstype, "not on a disk of this snapshot request")
            for fs in plan.filesystems if fs not in keep]
    kept = {fs.devno for fs in keep}
    edges = [edge for edge in plan.edges if edge.first in kept and edge.then in kept]
    return FreezePlan(keep, edges, list(plan.skipped) + left, plan.cycles)


class XapiTrigger(object):
    """`xe-quiesce run`: advertise, watch C/action, play the guest's part per request.

    As a trigger of the daemon: start() takes SIGTERM/SIGINT, connects, advertises and
    watches; serve() is the daemon's main thread until one of those signals (the
    conversation thaws and unadvertises first); stop() gives back what start() took.
    Its session is the slot's (a core.slot.SessionSlot), begun and ended by the
    conversation.
    """

    def __init__(self, config, client, slot, domain_path=None, planner=None):
        self.config = config
        self.planner = planner  # the daemon's warm plan (warm_plan.WarmPlan)
        self.client = client
        self.slot = slot
        self.domain_path = domain_path
        self.journal = Journal(config.state.run_dir)
        self.machine = None
        self.session = None
        self.status_path = None
        self.stop_requested = False
        self.reconnected = False
        self.running = False
        self.feature_refused = False
        self.interrupted = False  # the session journal shows a xapi session cut off
        self.wake_fd = None  # read end of the signal wake-up pipe between start and stop
        self._signals = None  # (the handlers before ours, the wake-up fd before ours, write end)

    # -- life cycle ---------------------------------------------------------------

    def after_reconcile(self, closed):
        """What the daemon's start-up reconcile closed (a journal state, or None): a
        XAPI session cut off means the host may still wait for this guest's answer."""
        self.interrupted = bool(closed) and closed.get("trigger") == proto.XAPI

    def request_stop(self, *_signal_args):
        self.stop_requested = True

    def home(self):
        """(xenstore URI, domain path): where this VM's keys are (the path is None until
        start() has found it)."""
        return self.client.uri, self.domain_path

    def status(self):
        """(fields, lines) of `xe-quiesce status`: the xenstore conversation."""
        part = {"uri": self.client.uri, "domain_path": self.domain_path,
                "feature_advertised": not self.feature_refused,
                "conversation": self.machine.state if self.machine else None}
        return {"xenstore": part}, ["xenstore: {} at {}, control/feature-quiesce {}".format(
            part["uri"], part["domain_path"], "advertised" if part["feature_advertised"]
            else "refused by the host's permissions")]

    def start(self):
        """Take SIGTERM/SIGINT (they end serve() through a wake-up pipe), connect, find
        the home, advertise and watch; raises QuiesceError if impossible."""
        previous = {sig: signal.signal(sig, self.request_stop)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        self.wake_fd, wake_write = os.pipe()
        for fd in (self.wake_fd, wake_write):
            os.set_blocking(fd, False)
        self._signals = previous, signal.set_wakeup_fd(wake_write), wake_write
        try:
            self.client.connect()
            self.domain_path = self.domain_path or self._own_domain_path()
        except XenstoreError as error:
            raise QuiesceError("xenstore: {}".format(error))
        self.machine = cv.Conversation(self.domain_path, __version__)
        self.client.on_reconnect = self._on_reconnect
        self._recover_interrupted()
        self.advertise()
        # The domain's identity now, so a resume or migration is seen as a change.
        self.feed(self._read_event("domain"))
        for token, path in (("action", self.machine.control + "/action"),
                            ("feature", self._home(proto.FEATURE_QUIESCE)),
                            ("domain", self._home("unique-domain-id"))):
            try:
                self.client.watch(path, token)
            except XenstoreError as error:
                raise QuiesceError("cannot watch {}: {}".format(path, error))
        self.running = True
        LOG.info("xe-quiesce %s serving %s (%s)", __version__, self.domain_path, self.client.uri)

    def serve(self):
        """Serve until stopped (SIGTERM/SIGINT); a frozen session is thawed first."""
        watchdog = None
        try:
            interval = watchdog_interval()
            if interval:
                watchdog = Watchdog(interval).start()
            notify("READY=1")
            while self.running:
                if watchdog:
                    watchdog.beat(self.config.freeze.max_frozen + 2 * interval)
                self.step(interval)
        finally:
            if watchdog:
                watchdog.stop()

    def stop(self):
        """Give back the signals and close the connection (after serve(), or a start()
        that failed)."""
        if self._signals is not None:
            previous, previous_wakeup, wake_write = self._signals
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self.wake_fd, wake_write):
                os.close(fd)
            self.wake_fd = self._signals = None
        self.client.close()

    def _recover_interrupted(self):
        """A request journaled and not closed: the agent died in its conversation.

        The host still waits when C is there with neither a status (its first value is
        final: never answer twice) nor an action (a new request, served as usual).
        """
        request = self.journal.read_request()
        if request is None and not self.interrupted:
            return
        control = (request or {}).get("control") or self.machine.control
        try:
            vss = self.client.read_or(self._home("vss"))
            if vss is not None and not cv.XS_PATH_RE.match(vss):
                vss = None
            waiting = (self.client.exists(control) and
                       not self.client.exists(control + "/status") and
                       not self.client.exists(control + "/action"))
            for command in self.machine.recover(request, vss, waiting):
                self.execute(command)
        except XenstoreError as error:
            LOG.warning("cannot clear the interrupted request's keys: %s", error)

    def _own_domain_path(self):
        domid = self.client.read("domid")  # relative: resolved in our own home
        if not domid.isdigit():
            raise XenstoreError("domid is {!r}, not a number".format(domid))
        return self.client.get_domain_path(int(domid))

    def _home(self, relative):
        return "{}/{}".format(self.domain_path, relative)

    def _on_reconnect(self):
        # Called inside whichever client call noticed the drop: only take note here.
        self.reconnected = True

    # -- the loop -------------------------------------------------------------------

    def step(self, timeout=None):
        """Wait for one thing to happen and handle it: up to `timeout` s (None: no
        limit) and, while frozen, no longer than the session's deadline."""
        if self.stop_requested and self.machine.state in (cv.IDLE, cv.FROZEN):
            self.stop_requested = False
            return self.feed(cv.Stop())
        if self.machine.state == cv.FROZEN:
            left = self.session.remaining()
            if left <= 0:
                return self.feed(cv.Timeout())
            timeout = left if timeout is None else min(timeout, left)
        event = self.client.wait_event(timeout, self.wake_fd)
        if event is None and self.wake_fd is not None:
            self._drain_wakeups()
        if self.reconnected:
            self.reconnected = False
            self.feed(cv.Reconnected())
        if event is not None:
            seen = self._read_event(event[1])
            if seen is not None:
                self.feed(seen)

    def _drain_wakeups(self):
        """Empty the wake-up pipe (the signal handler has already set its flag)."""
        try:
            while os.read(self.wake_fd, 512):
                pass
        except BlockingIOError:
            pass

    def _read_event(self, token):
        """Re-read what a watch event points at (events are only hints)."""
        try:
            if token == "action":
                return cv.ActionSeen(self.client.read_or(self.machine.control + "/action"))
            if token == "status":
                if self.status_path is None:
                    return None  # queued before the unwatch: stale
                return cv.StatusSeen(self.client.read_or(self.status_path))
            return cv.HomeChanged(self.client.read_or(self._home(proto.FEATURE_QUIESCE)),
                                  self.client.read_or(self._home("unique-domain-id")))
        except XenstoreError as error:
            return cv.IoFailed(str(error))

    def feed(self, event):
        """Run the machine on `event` and on every result its commands produce."""
        pending = [event]
        while pending:
            event = pending.pop(0)
            for command in self.machine.handle(event):
                try:
                    result = self.execute(command)
                except XenstoreError as error:
                    pending.append(cv.IoFailed("{}: {}".format(type(command).__name__, error)))
                    break
                if result is not None:
                    pending.append(result)

    # -- commands ---------------------------------------------------------------------

    def execute(self, command):
        handler = getattr(self, "do_" + type(command).__name__)
        return handler(*command)

    def do_Write(self, path, value):
        self.client.write(path, value)

    def do_Rm(self, path):
        self.client.rm(path)

    def do_Log(self, level, message):
        LOG.log(level, message)

    def do_Publish(self, state):
        try:
            self.client.write(self._home(proto.AGENT_STATE), state)
        except XenstoreError as error:
            LOG.warning("cannot publish state %s: %s", state, error)

    def do_Advertise(self):
        self.advertise()

    def advertise(self):
        """control/feature-quiesce, data/updated, our version and state; best effort.

        Under plain xl `control/` is read-only to the guest (EACCES): logged once, not
        fatal, as the feature cannot be offered there anyway.
        """
        try:
            self.client.write(self._home(proto.FEATURE_QUIESCE), "1")
            self.feature_refused = False
        except XenstorePermissionError as error:
            level = logging.DEBUG if self.feature_refused else logging.WARNING
            LOG.log(level, "cannot advertise %s (%s): the host will not ask this guest for "
                    "quiesced snapshots", proto.FEATURE_QUIESCE, error)
            self.feature_refused = True
        except XenstoreError as error:
            LOG.warning("cannot advertise %s: %s", proto.FEATURE_QUIESCE, error)
        state = cv.PUBLISHED.get(self.machine.state, "idle")
        for key, value in ((proto.AGENT_VERSION, __version__),
                           (proto.AGENT_STATE, state),
                           ("data/updated", time.strftime("%a %b %d %H:%M:%S UTC %Y",
                                                          time.gmtime()))):
            try:
                self.client.write(self._home(key), value)
            except XenstoreError as error:
                LOG.warning("cannot write %s: %s", key, error)

    def do_Unadvertise(self):
        """At stop: the feature says 0 so xapi refuses at once instead of waiting 60 s."""
        for action, key in ((lambda path: self.client.write(path, "0"), proto.FEATURE_QUIESCE),
                            (self.client.rm, proto.AGENT_STATE)):
            try:
                action(self._home(key))
            except XenstoreError as error:
                LOG.debug("at stop, %s: %s", key, error)

    def do_Record(self, request):
        """The request journal (tmpfs); without it the request is still served."""
        try:
            self.journal.write_request(request)
        except (OSError, QuiesceError) as error:  # QuiesceError: the run dir is gone
            LOG.error("cannot journal the host's request (a crash now would leave it "
                      "unanswered): %s", error)

    def do_ReadVss(self):
        try:
            value = self.client.read_or(self._home("vss"))
        except XenstoreValueError as error:  # garbage bytes: the machine reports them
            return cv.VssRead(None, str(error), None)
        return cv.VssRead(value, None, self._owner(value))

    def _owner(self, vss):
        """The domid owning V (its first permission, contract 0.1); "" if V is absent,
        None if unreadable or not worth looking up (the machine refuses the value)."""
        if vss is None or not cv.VSS_RE.match(vss):
            return None
        try:
            perms = self.client.get_perms(vss)
        except XenstoreNotFound:
            return ""
        except (XenstorePermissionError, XenstoreValueError):
            return None
        return perms[0][1:] if perms else None

    def do_ReadVbds(self):
        base = self._home("device/vbd")
        try:
            devids = self.client.ls(base)
        except XenstoreNotFound:
            devids = []
        return cv.VbdsRead([self._read_vbd(base, devid) for devid in devids])

    def _read_vbd(self, base, devid):
        """One VBD's raw values; garbage is recorded in `error`, judged by the machine."""
        frontend = "{}/{}".format(base, devid)
        try:
            device_type = self.client.read_or(frontend + "/device-type")
            backend = self.client.read_or(frontend + "/backend")
            vdi = None
            if backend is not None and cv.XS_PATH_RE.match(backend):
                vdi = self.client.read_or(backend + "/sm-data/vdi-uuid")
        except XenstoreValueError as error:
            return cv.VbdNode(devid, None, None, None, str(error))
        return cv.VbdNode(devid, device_type, backend, vdi, None)

    def do_StartSession(self, devids):
        try:
            plan = plan_for(self.config, devids, self.planner() if self.planner else None)
            self.session, summary = self.slot.begin(proto.XAPI, plan)
        except BusyError as error:
            return cv.QuiesceFailed(proto.ERR_BUSY, "busy: {}".format(error))
        except QuiesceError as error:
            return cv.QuiesceFailed(proto.ERR_QUIESCE, "cannot quiesce: {}".format(error))
        except Exception as error:  # the session has undone itself; report, keep serving
            LOG.exception("quiesce session failed")
            return cv.QuiesceFailed(proto.ERR_QUIESCE, "cannot quiesce: {}: {}".format(
                type(error).__name__, error))
        filesystems = [{"mount_point": fs.mount_point, "fstype": fs.fstype,
                        "vbds": list(fs.vbds)} for fs in self.session.plan.filesystems]
        return cv.QuiesceOk(summary, filesystems)

    def do_AwaitStatus(self, path):
        self.status_path = path
        self.client.watch(path, "status")

    def do_Thaw(self):
        """Thaw first, then stop watching V/status (xenstore may be down)."""
        summary = self.slot.end(self.session)
        self.session = None
        path, self.status_path = self.status_path, None
        if path is not None:
            try:
                self.client.unwatch(path, "status")
            except XenstoreError as error:
                LOG.debug("unwatch %s: %s", path, error)
        LOG.info("thawed: %s (frozen %s s)", summary["result"],
                 "?" if summary["window_seconds"] is None
                 else "{:.3f}".format(summary["window_seconds"]))
        return cv.Thawed(summary)

    def do_ReadResult(self, vss, vdis):
        read = self.client.read_or
        ids = {vdi: read("{}/snapshot/{}/id".format(vss, vdi)) for vdi in vdis}
        return cv.ResultRead(read(vss + "/snaptype"), read(vss + "/snapuuid"), ids)

    def do_Exit(self):
        self.running = False
