"""`xe-quiesce-host relay`: Xen Orchestra's sync hook answered in dom0, over xenstore.

Why: XO's hook (`xo:notify-on-snapshot`) otherwise needs an HTTPS listener in every
guest, reachable by XO at an address its guest tools report. With the tag
`xo:notify-on-snapshot=https://<a pool host>:<port>/?vm=<vm uuid>`, XO calls
`/sync?vm=` and `/post-sync?vm=` here instead (XO keeps the tag's query string), and
the guest needs no network: the relay plays XAPI and snapwatchd over the local xenstore
with the companion's roles (companion.converse), its snapwatchd answering the guest's
`create-snapshots` with the snapshot XO takes meanwhile.

One session per VM, its states:

    QUIESCING  the guest was asked; /sync waits (at most `sync_timeout`)
    FROZEN     /sync answered 200; snapwatchd holds the guest until /post-sync
    TAKEN      /post-sync came; the guest is given XO's snapshot and thaws
    ABANDONED  /sync gave up waiting: a guest that freezes now is told snapshots-failed
    DONE       the guest reported; the snapshot is tagged `quiesced` (or the reason kept)

No /post-sync within `hold` seconds of the 200 (XO sends none when its snapshot
fails): snapwatchd answers snapshots-failed and the guest thaws; the guest's own
max-frozen bounds all of it anyway. A VM running on another host of the pool is
redirected (307) to the relay there, which XO's fetch follows.

Who may call is checked as by the guest's own sync hook (its AccessPolicy: allow-from,
bearer secret), with a certificate made the same way (tls.py), and requests are read by
the same strict server (https.py): nothing starts before a request is complete, `//sync`
is not /sync, and a client that fails is one log line.
"""
import contextlib
import ipaddress
import logging
import socket
import threading
import time
import urllib.parse

from .. import https, tls
from ..access import AccessPolicy, read_secret
from ..errors import QuiesceError
from ..protocol import UUID_RE
from ..xenstore import XenstoreError
from . import companion
from .snapwatchd_role import SnapshotResult
from .xenapi_ops import (
    HostError,
    annotate,
    api_errors,
    describe,
    local_host_uuid,
    open_session,
    snapshot_disks,
    xenapi,
)

LOG = logging.getLogger(__name__)

PORT = 1727
SYNC_TIMEOUT = 50.0  # XO waits 60 s (syncHookTimeout) for /sync, then snapshots anyway
HOLD = 50.0          # from /sync's 200 to /post-sync; the guest's max-frozen is 60 s
WATCH = 0.5          # s between looks at a waiting /sync's connection
POLL = 5.0           # s between the listener's looks for a stop (idle: nothing else)
REPORT_WAIT = 30.0   # /post-sync waits this long for the guest's report (XO does not wait)
TLS_DIR = "/etc/xe-quiesce-host/tls"
LABEL = "relay:"  # names the options in the messages of the shared TLS and secret code

QUIESCING, FROZEN, TAKEN, ABANDONED, DONE = "quiescing", "frozen", "taken", "abandoned", "done"


class Refusal(Exception):
    """An answer given before anything is asked of the guest: (code, text)."""

    def __init__(self, code, text, headers=()):
        Exception.__init__(self, text)
        self.code = code
        self.text = text
        self.headers = headers


class RelaySession(companion.SnapshotTaker):
    """One VM's quiesce for XO, from /sync to the guest's report.

    It is snapwatchd's take_snapshot too (called in snapwatchd's thread while the
    guest is frozen): it lets /sync answer, waits for /post-sync, and hands the guest
    the snapshot XO took since /sync.
    """

    def __init__(self, relay, api, session, ref, record, vm_disks):
        companion.SnapshotTaker.__init__(self, vm_disks)
        self.relay = relay
        self.api = api
        self.xapi_session = session
        self.ref = ref
        self.record = record
        self.vm_uuid = record["uuid"]
        self.state = QUIESCING
        self.changed = threading.Condition()
        self.before = set(api.VM.get_snapshots(ref))  # XO's will be the new one
        self.reason = None        # why it failed, for /sync's or /post-sync's 500
        self.abandoned_because = "the relay is stopping"
        self.refused = False      # failed before the guest was asked (no agent)
        self.cleanup = contextlib.ExitStack()

    # -- the states ---------------------------------------------------------------

    def _to(self, state):
        with self.changed:
            LOG.debug("VM %s: %s -> %s", self.vm_uuid, self.state, state)
            self.state = state
            self.changed.notify_all()

    def _wait_while(self, states, timeout):
        with self.changed:
            self.changed.wait_for(lambda: self.state not in states, timeout)
            return self.state

    # -- the conversation's thread -----------------------------------------------------

    def run(self):
        settings = self.relay.settings
        try:
            answer = companion.converse(
                settings, self.record, self,
                timeout=self.relay.sync_timeout + self.relay.hold + REPORT_WAIT,
                snapshot_timeout=self.relay.hold + REPORT_WAIT)
            annotate(self.api, self.api.VM.get_by_uuid(answer.snapuuid), companion.QUIESCED_TAG,
                     {companion.MANIFEST_KEY: answer.snapid})
            LOG.info("VM %s: quiesced snapshot %s", self.vm_uuid, answer.snapuuid)
        except companion.ConversationFailed as error:
            self._failed(str(error))
        except companion.GuestCannotQuiesce as error:
            self.refused = True
            self._failed(str(error))
        except xenapi().Failure as error:
            self._failed("XAPI: {}".format(describe(error)))
        except XenstoreError as error:
            self._failed("xenstore: {}".format(error))
        except Exception as error:  # logged with its traceback; XO gets one line
            LOG.exception("VM %s: the relay's session failed", self.vm_uuid)
            self._failed("internal error: {}".format(error))
        finally:
            self.cleanup.close()  # the VM's lock: the next request may start
            self.relay.forget(self)
            self._to(DONE)
            try:
                self.xapi_session.xenapi.session.logout()
            except Exception:  # the session may be gone with XAPI; nothing depends on it
                LOG.debug("logout failed", exc_info=True)

    def _failed(self, text):
        LOG.warning("VM %s: %s", self.vm_uuid, text)
        self.reason = text

    # -- snapwatchd's take_snapshot (its thread; the guest is frozen) -------------------

    def __call__(self, vdis, whole_vm):
        self.check_disks(vdis, whole_vm)
        with self.changed:
            if self.state != QUIESCING:
                self.fail("the guest froze after /sync was given up ({})".format(
                    self.abandoned_because))
            self.state = FROZEN
            self.changed.notify_all()
            self.changed.wait_for(lambda: self.state != FROZEN, self.relay.hold)
            if self.state != TAKEN:
                stopped = self.state == ABANDONED
                self.state = ABANDONED
                self.fail("the relay stopped" if stopped else
                          "no /post-sync within {:g} s of /sync's answer (XO sends none "
                          "when its snapshot fails)".format(self.relay.hold))
        return self._xo_snapshot()

    def abandon(self):
        """The relay stops: a guest held now is told snapshots-failed and thaws."""
        with self.changed:
            if self.state in (QUIESCING, FROZEN):
                self.state = ABANDONED
                self.changed.notify_all()

    def _xo_snapshot(self):
        """The newest snapshot of the VM that was not there at /sync."""
        new = [ref for ref in self.api.VM.get_snapshots(self.ref) if ref not in self.before]
        if not new:
            self.fail("/post-sync came but VM {} has no snapshot taken since /sync".format(
                self.vm_uuid))
        ref = max(new, key=lambda one: str(self.api.VM.get_snapshot_time(one)))
        self.uuid = self.api.VM.get_uuid(ref)
        return SnapshotResult(self.uuid, snapshot_disks(self.api, ref))

    # -- the requests' threads -------------------------------------------------------------

    def sync(self, client_gone=lambda: False):
        """/sync's answer, once the guest froze or failed, or when /sync gives up: after
        `sync_timeout`, or as soon as `client_gone()` (XO aborted at its own timeout and
        snapshots without us). A guest that freezes after that is told snapshots-failed
        at once (the contract has no way to stop hooks already running in the guest)."""
        deadline = time.monotonic() + self.relay.sync_timeout
        state = QUIESCING
        while state == QUIESCING and time.monotonic() < deadline and not client_gone():
            state = self._wait_while((QUIESCING,), min(WATCH, deadline - time.monotonic()))
        if state == QUIESCING:
            why = "XO stopped waiting" if client_gone() else \
                "the guest did not quiesce within {:g} s".format(self.relay.sync_timeout)
            if self._abandon_quiescing(why):
                return 500, "{}; nothing is frozen".format(why)
            state = self.state
        if state == FROZEN:
            return 200, "frozen: VM {}".format(self.vm_uuid)
        if state == ABANDONED:
            return 500, "{}; nothing is frozen".format(self.abandoned_because)
        if self.refused:
            return 412, self.reason
        return 500, "quiesce failed, nothing is frozen: {}".format(self.reason)

    def _abandon_quiescing(self, why):
        with self.changed:
            if self.state != QUIESCING:
                return False
            LOG.warning("VM %s: %s before the guest froze", self.vm_uuid, why)
            self.state, self.abandoned_because = ABANDONED, why
            self.changed.notify_all()
            return True

    def post_sync(self):
        if self._abandon_quiescing("/post-sync came before the guest froze (XO went on "
                                   "without waiting)"):
            return 200, "abandoned: the guest had not frozen; it is told so when it does"
        with self.changed:
            if self.state != FROZEN:
                return 412, "nothing is frozen for VM {}".format(self.vm_uuid)
            self.state = TAKEN
            self.changed.notify_all()
        self._wait_while((TAKEN,), REPORT_WAIT + self.relay.hold)
        if self.state != DONE:
            return 202, "the guest is thawing; its report is still to come"
        if self.reason:
            return 500, self.reason
        return 200, "quiesced snapshot {}".format(self.uuid)


class Relay(object):
    """The HTTPS listener and the sessions of the VMs of this host.

    `options`: allow_from (networks), secret_file, port, address, cert_file, key_file,
    tls_dir, as the command's options give them."""

    def __init__(self, options, settings, sync_timeout=SYNC_TIMEOUT, hold=HOLD):
        self.options = options
        self.settings = settings
        self.sync_timeout = sync_timeout
        self.hold = hold
        self.sessions = {}
        self.lock = threading.Lock()
        self.host_uuid = local_host_uuid(settings.inventory)
        self.server = self.thread = self.policy = self.context = self.cert = None
        self.stopping = False

    def start(self):
        """Check the settings, make or load the certificate, listen; HostError if not."""
        reason = off_reason(self.options)
        if reason:
            raise HostError(reason)
        try:
            secret = read_secret(self.options.secret_file, LABEL) \
                if self.options.secret_file else None
            self.cert, key = tls.certificate_pair(self.options, LABEL)
            self.context = tls.server_context(self.cert, key, LABEL)
        except QuiesceError as error:
            raise HostError(str(error))
        self.policy = AccessPolicy(self.options.allow_from, secret)
        self.server = _Server(self, self.options.address, self.options.port)
        # Wakes every POLL s to see a stop (then it answers nothing new: `stopping`).
        self.thread = threading.Thread(target=self.server.serve_forever, args=(POLL,),
                                       name="relay", daemon=True)
        self.thread.start()
        LOG.info("xe-quiesce-host relay listening on port %d (certificate %s)", self.port(),
                 tls.fingerprint(self.cert))

    def port(self):
        return self.server.server_address[1] if self.server else self.options.port

    def tls_context(self):
        """The context made at start (the relay checks its pair by making it)."""
        return self.context

    def stop(self, wait=15.0):
        """Tell the guests still held (they thaw), stop listening, wait a little for
        the guests' reports."""
        with self.lock:
            self.stopping = True
            held = list(self.sessions.values())
        for session in held:
            session.abandon()
        if self.server is not None:
            self.server.shutdown()
            self.thread.join()
            self.server.server_close()
        for session in held:
            session._wait_while((QUIESCING, FROZEN, TAKEN, ABANDONED), wait)

    def forget(self, session):
        with self.lock:
            if self.sessions.get(session.vm_uuid) is session:
                del self.sessions[session.vm_uuid]

    def answer(self, path, query, client_gone=lambda: False):
        """(code, text, headers) for GET `path`?`query` from an allowed client;
        `client_gone()`: whether it hung up meanwhile."""
        try:
            vm_uuid = _vm_argument(query)
            with self.lock:
                if self.stopping:
                    raise Refusal(503, "the relay is stopping")
                held = self.sessions.get(vm_uuid)
            if path == "/post-sync":
                if held is None:
                    _logout(self._locate(vm_uuid, path, query)[0])  # redirects, or why not
                    raise Refusal(412, "nothing is frozen for VM {}".format(vm_uuid))
                return held.post_sync() + ((),)
            if held is not None:
                raise Refusal(409, "busy: VM {} is already held for a snapshot ({})".format(
                    vm_uuid, held.state))
            return self._start(vm_uuid, path, query).sync(client_gone) + ((),)
        except Refusal as refusal:
            return refusal.code, refusal.text, refusal.headers
        except HostError as error:
            return 500, str(error), ()

    def _locate(self, vm_uuid, path, query):
        """A session on XAPI and the VM's ref and record if it runs here; else Refusal
        (unknown, not a guest, not running, or a redirect to its host's relay)."""
        session = open_session(self.settings.xapi_url)
        try:
            api = session.xenapi
            with api_errors("VM {}".format(vm_uuid)):
                try:
                    ref = api.VM.get_by_uuid(vm_uuid)
                except xenapi().Failure as error:
                    if error.details[0] == "UUID_INVALID":
                        raise Refusal(404, "no VM has the uuid {}".format(vm_uuid))
                    raise
                record = api.VM.get_record(ref)
                if record["is_a_template"] or record["is_a_snapshot"] or \
                        record["is_control_domain"]:
                    raise Refusal(404, "{} is not a guest VM".format(vm_uuid))
                if record["power_state"] != "Running":
                    raise Refusal(412, "VM {} is {}, not Running".format(
                        vm_uuid, record["power_state"]))
                if record["resident_on"] != api.host.get_by_uuid(self.host_uuid):
                    raise self._redirect(api.host.get_record(record["resident_on"]), path,
                                         query)
            return session, ref, record
        except BaseException:
            _logout(session)
            raise

    def _redirect(self, host, path, query):
        address = host["address"]
        if ":" in address:
            address = "[{}]".format(address)
        location = "https://{}:{}{}?{}".format(address, self.port(), path, query)
        return Refusal(307, "VM runs on host {}: {}".format(host["name_label"], location),
                       (("Location", location),))

    def _start(self, vm_uuid, path, query):
        session, ref, record = self._locate(vm_uuid, path, query)
        try:
            with api_errors("VM {}".format(vm_uuid)):
                vm_disks = companion.vm_disk_uuids(session.xenapi, record)
                held = RelaySession(self, session.xenapi, session, ref, record, vm_disks)
            try:  # the command and the plugin take the same lock
                held.cleanup.enter_context(companion.vm_lock(self.settings.lock_dir, vm_uuid))
            except HostError as error:
                raise Refusal(409, "busy: {}".format(error))
            with self.lock:
                if vm_uuid in self.sessions:
                    held.cleanup.close()
                    raise Refusal(409, "busy: VM {} is already held for a snapshot".format(
                        vm_uuid))
                self.sessions[vm_uuid] = held
        except BaseException:
            _logout(session)
            raise
        threading.Thread(target=held.run, name="relay-" + vm_uuid, daemon=True).start()
        return held


def off_reason(options):
    """Why the relay may not listen: an open port that freezes guests for anyone is a
    denial-of-service switch. None when an allow-list or a secret is configured."""
    if not options.allow_from and not options.secret_file:
        return ("the relay stays off: give --allow-from (the XO servers' addresses) "
                "and/or --secret-file")
    return None


def _logout(session):
    try:
        session.xenapi.session.logout()
    except Exception:  # XAPI may be gone; nothing depends on it
        LOG.debug("logout failed", exc_info=True)


def _vm_argument(query):
    values = urllib.parse.parse_qs(query, keep_blank_values=True).get("vm", [])
    if len(values) != 1 or not UUID_RE.match(values[0]):
        raise Refusal(400, "give exactly one vm=<VM uuid> (the tag: "
                           "xo:notify-on-snapshot=https://<host>:<port>/?vm=<VM uuid>)")
    return values[0].lower()


class _Handler(https.Handler):
    """One GET /sync or /post-sync?vm=<uuid> per connection."""

    def get(self, request):
        if request.path not in ("/sync", "/post-sync"):
            return 404, "not found"
        query = request.target.partition("?")[2]
        return self.server.owner.answer(request.path, query, lambda: https.hung_up(self.request))


class _Server(https.Server):
    """HTTPS on one address; the default "::" takes IPv4 too (dual stack). A client that
    fails before its request is an INFO line: the relay's log records every caller."""

    handler = _Handler
    log = LOG
    label = "relay"
    software = "xe-quiesce-host"
    failure_level = logging.INFO

    def __init__(self, relay, address, port):
        address = address or ("::" if socket.has_ipv6 else "0.0.0.0")
        try:
            version = ipaddress.ip_address(address).version
        except ValueError:
            raise HostError("--address {!r} is not an IP address".format(address))
        try:
            https.Server.__init__(self, (address, port),
                                  socket.AF_INET6 if version == 6 else socket.AF_INET, relay)
        except OSError as error:
            raise HostError("cannot listen on port {} of {}: {}".format(
                port, address, error.strerror))
