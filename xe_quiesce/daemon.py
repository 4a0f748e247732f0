"""`xe-quiesce run` assembled: every trigger around one session slot, one journal.

Triggers: the local control socket the CLI uses, Xen Orchestra's HTTPS sync hook, and
the xenstore conversation with the host. Each is start(), stop() and status() to the
daemon (status: the trigger's (fields, lines) of `xe-quiesce status`); the host's also
has serve(), its loop, which is the main thread's. Their sessions all take the one
core.slot.SessionSlot, so a request while another trigger's session is active gets a busy
error naming that trigger, and the slot says who may thaw what.

Start-up order: the deadline guard is spawned first, while this process has no other
thread, and the plan is made (kept warm, see warm_plan.py); then the triggers start, the
host's last: a daemon that cannot take the control socket exits before it offers the
feature to the host. Every session arms that one guard and takes that plan.
"""
import logging
import os

from . import __version__
from .core import logbuffer
from .core.discovery import plan_inputs
from .core.guard import GuardService
from .core.journal import Journal
from .core.session import QuiesceSession, make_plan
from .core.slot import SessionSlot
from .core.warm_plan import WarmPlan
from .linux.mountinfo import read_mountinfo
from .triggers.control import ControlServer
from .triggers.xapi import XapiTrigger
from .triggers.xo import XoListener

log = logging.getLogger(__name__)


class Daemon(object):
    def __init__(self, config, client, domain_path):
        self.config = config
        self.journal = Journal(config.state.run_dir)
        self.guards = GuardService()
        self.plans = WarmPlan(lambda: make_plan(config),
                              lambda: plan_inputs(config.freeze, read_mountinfo()))
        self.slot = SessionSlot(config, lambda trigger, plan=None: QuiesceSession(
            config, trigger, plan=plan, guards=self.guards, planner=self.plans))
        self.xapi = XapiTrigger(config, client, self.slot, domain_path, planner=self.plans)
        self.triggers = [ControlServer(config, self.slot, self.status),
                         XoListener(config, self.slot, self.xapi.home), self.xapi]

    def run(self):
        logbuffer.add_syslog_when_detached()
        self.journal.ensure_dir()
        self.guards.start()
        self._warm_up()
        closed = self.journal.reconcile()
        if closed:
            log.warning("earlier session %s (%s): %s", closed["session"], closed.get("trigger"),
                        closed["message"])
        self.xapi.after_reconcile(closed)
        started = []
        try:
            for trigger in self.triggers:
                started.append(trigger)  # a start that fails half way is stopped too
                trigger.start()
            self.xapi.serve()
        finally:
            for trigger in reversed(started):
                trigger.stop()
            self.slot.shutdown()
            self.guards.stop()
            self.plans.close()

    def _warm_up(self):
        """Plan now, so the first request does not; a plan that cannot be made now is
        reported by the request that needs it, in that request's words."""
        try:
            self.plans()
        except Exception as error:  # noqa: BLE001 - any failure is the request's to say
            log.debug("no plan at start: %s", error)

    def status(self):
        """The daemon's part of `xe-quiesce status`: each trigger's, the host's first."""
        data = {"running": True, "pid": os.getpid(), "version": __version__,
                "held_by_daemon": self.slot.held_trigger()}
        lines = []
        for trigger in reversed(self.triggers):
            fields, trigger_lines = trigger.status()
            data.update(fields)
            lines.extend(trigger_lines)
        data["lines"] = lines
        return data
