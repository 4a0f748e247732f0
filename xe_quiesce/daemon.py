"""`xe-quiesce run` assembled: every trigger around one session holder, one journal.

Triggers: the xenstore conversation (its own loop, the main thread), Xen Orchestra's
HTTPS sync hook, and the local control socket the CLI uses. They share the journal's
one-session rule, so a request while another trigger's session is active gets a busy
error naming that trigger.

Start-up order: the deadline guard is spawned first, while this process has no other
thread, and the plan is made (kept warm, see warm_plan.py); then the triggers' threads
start. Every session arms that one guard and takes that plan.
"""
import logging
import os
import socket

from . import __version__
from .config import session_timeout
from .core import logbuffer
from .core.discovery import plan_inputs
from .core.guard import GuardService
from .core.slot import SessionHolder
from .core.hooks import HookSet
from .core.journal import Journal
from .core.session import QuiesceSession, busy_message, make_plan, thaw_from_journal
from .core.warm_plan import WarmPlan
from .errors import BusyError, ConfigError, QuiesceError
from .linux.mountinfo import read_mountinfo
from .protocol import CLI, XAPI
from .triggers.control import ControlServer
from .triggers.xapi import XapiTrigger
from .triggers.xo import XoListener
from .triggers.xo_tag import advice, networks_from_xenstore
from .xenstore import XenstoreClient, XenstoreError

log = logging.getLogger(__name__)


class Daemon(object):
    def __init__(self, config, client, domain_path=None, environ=None):
        self.config = config
        self.journal = Journal(config.state.run_dir)
        self.guards = GuardService()
        self.plans = WarmPlan(lambda: make_plan(config),
                              lambda: plan_inputs(config.freeze, read_mountinfo()))
        self.holder = SessionHolder(config, session_factory=self._session)
        self.xo = XoListener(config, self.holder)
        self.agent = XapiTrigger(config, client, domain_path, environ=environ,
                                session_factory=lambda plan: self._session(
                                    config, XAPI, plan=plan), planner=self.plans)
        self.control = ControlServer(config.state.run_dir, {
            "freeze": self.cli_freeze, "thaw": self.cli_thaw, "status": self.status})
        self.xo_error = None

    def _session(self, config, trigger, plan=None):
        return QuiesceSession(config, trigger, plan=plan, guards=self.guards,
                              planner=self.plans)

    def run(self):
        logbuffer.add_syslog_when_detached()
        self.journal.ensure_dir()
        self.guards.start()
        self._warm_up()
        closed = self.journal.reconcile()
        if closed:
            log.warning("earlier session %s (%s): %s", closed["session"], closed.get("trigger"),
                        closed["message"])
            self.agent.interrupted = closed.get("trigger") == XAPI
        self.control.start()
        try:
            try:
                self.xo.start()
            except (QuiesceError, OSError) as error:  # xenstore is served without XO
                self.xo_error = self._why_no_xo(error)
                log.error("Xen Orchestra sync hook not started: %s", self.xo_error)
            self.agent.run()
        finally:
            self.xo.stop()
            self.control.stop()
            self.holder.shutdown()
            self.guards.stop()
            self.plans.close()

    def _warm_up(self):
        """Plan now, so the first request does not; a plan that cannot be made now is
        reported by the request that needs it, in that request's words."""
        try:
            self.plans()
        except Exception as error:  # noqa: BLE001 - any failure is the request's to say
            log.debug("no plan at start: %s", error)

    def _why_no_xo(self, error):
        if isinstance(error, ConfigError):
            return str(self.config.located(error))
        if isinstance(error, OSError):  # the port is taken
            return "cannot listen on port {}: {}".format(self.config.xo.port,
                                                         error.strerror or error)
        return str(error)

    def cli_freeze(self, request):
        timeout = session_timeout(request.get("timeout"), self.config.freeze.max_frozen)
        return self.holder.freeze(CLI, timeout)

    def cli_thaw(self, _request):
        """The admin may thaw what the daemon holds, or a CLI freeze from before it ran;
        not a xenstore session, which the host is waiting on."""
        summary = self.holder.thaw(CLI)
        if summary is not None:
            return summary
        active = self.journal.active()
        if active and active.get("trigger") == XAPI:
            raise BusyError(busy_message(active) + "; the host's snapshot is waiting on it")
        return thaw_from_journal(self.journal, HookSet.load(self.config))

    def xo_tag(self):
        """(tag, why) for XO to reach the hook, from the addresses the guest tools report
        in xenstore (read on a connection of its own: the agent's is its loop's)."""
        networks, note = {}, ""
        if self.agent.domain_path:
            try:
                with XenstoreClient(self.agent.client.uri, timeout=2.0) as client:
                    networks = networks_from_xenstore(client, self.agent.domain_path)
            except (XenstoreError, OSError) as error:
                note = "; the guest tools' addresses could not be read: {}".format(error)
        import psutil  # a status request's, not the idle daemon's memory

        own = [entry.address for entries in psutil.net_if_addrs().values()
               for entry in entries if entry.family in (socket.AF_INET, socket.AF_INET6)]
        tag, why = advice(networks, self.config.xo.port, self.config.xo.address, own)
        return tag, why + note

    def status(self, _request):
        xo = self.xo.status()
        xo["off_reason"] = self.xo_error or xo["off_reason"]
        xo_on = xo["on"]
        data = {
            "running": True, "pid": os.getpid(), "version": __version__,
            "xenstore": self.agent.status(), "xo_sync_hook": xo,
            "held_by_daemon": self.holder.held_trigger(),
        }
        xs = data["xenstore"]
        lines = ["xenstore: {} at {}, control/feature-quiesce {}".format(
            xs["uri"], xs["domain_path"], "advertised" if xs["feature_advertised"]
            else "refused by the host's permissions")]
        if xo_on:
            lines.append("Xen Orchestra sync hook: on, port {}, certificate {}".format(
                data["xo_sync_hook"]["port"], data["xo_sync_hook"]["fingerprint"]))
            tag, why = self.xo_tag()
            data["xo_sync_hook"].update(tag=tag, tag_why=why)
            lines.append("Xen Orchestra tag for this VM: {}".format(tag))
            lines.append("  ({})".format(why))
        else:
            lines.append("Xen Orchestra sync hook: off ({})".format(
                data["xo_sync_hook"]["off_reason"]))
        data["lines"] = lines
        return data
