"""XAPI's half of VM.snapshot_with_quiesce: the request handshake under C (contract 1.2-3.8).

Faithful to the removed xapi code, including what makes it strict: the acknowledgement
limit, the status limit, the first status value being final, `C/error` having to exist,
and the error names (with the historical misspelling DEOS). `C` is removed at the end,
whatever happened, as xapi did.
"""
from .. import protocol
from ..xenstore import XenstoreNotFound
from .waiting import NotFinished, wait_for

ACK_TIMEOUT = 60.0        # xapi: C/action must disappear within 60 s (F3)
STATUS_TIMEOUT = 600.0    # xapi.conf snapshot_with_quiesce_timeout default (F4)

NOT_SUPPORTED = "VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED"
DEOS_NOT_RESPOND = "VM_SNAPSHOT_WITH_QUIESCE_PLUGIN_DEOS_NOT_RESPOND"
TIMEOUT = "VM_SNAPSHOT_WITH_QUIESCE_TIMEOUT"
FAILED = "VM_SNAPSHOT_WITH_QUIESCE_FAILED"
INTERNAL_ERROR = "INTERNAL_ERROR"
# C/error values that xapi relays as their own error code (contract F5).
VSS_REQUESTER_ERRORS = tuple("XEN_VSS_REQ_ERROR_" + name for name in (
    "INIT_FAILED", "PROV_NOT_LOADED", "NO_VOLUMES_SUPPORTED", "START_SNAPSHOT_SET_FAILED",
    "ADDING_VOLUME_TO_SNAPSET_FAILED", "PREPARING_WRITERS", "CREATING_SNAPSHOT",
    "CREATING_SNAPSHOT_XML_STRING"))


class XapiError(Exception):
    """An API error as xapi would return it: `code` and `params` (a list of strings)."""

    def __init__(self, code, params):
        Exception.__init__(self, "{}: {}".format(code, ", ".join(params)))
        self.code = code
        self.params = list(params)


class QuiescedSnapshot(object):
    """The guest's answer: the snapshot VM's uuid and the reassembled snapid."""

    def __init__(self, snapuuid, snapid):
        self.snapuuid = snapuuid
        self.snapid = snapid


def check_feature(client, domain_path, vm):
    """Execution-time check (contract 1.2): feature-snapshot or feature-quiesce is "1"."""
    if not protocol.advertises(lambda key: client.read_or(domain_path + "/" + key)):
        raise XapiError(NOT_SUPPORTED, [vm])


def snapshot_with_quiesce(client, domain_path, vm, ack_timeout=ACK_TIMEOUT,
                          status_timeout=STATUS_TIMEOUT, known_vm=None):
    """Ask the guest for a quiesced snapshot; return a QuiescedSnapshot or raise XapiError.

    `known_vm(uuid)` says whether a VM of that uuid exists (xapi's DB lookup of
    C/snapuuid, F6c); None accepts any non-empty value.
    """
    control = domain_path + "/" + protocol.SNAPSHOT_DIR
    check_feature(client, domain_path, vm)
    client.rm(control)
    try:
        client.write(control + "/action", protocol.CREATE_SNAPSHOT)
        if wait_for(client, control + "/action", lambda v: v is None,
                    ack_timeout) is NotFinished:
            raise XapiError(DEOS_NOT_RESPOND, [vm])
        status = wait_for(client, control + "/status", lambda v: v is not None, status_timeout)
        if status is NotFinished:
            raise XapiError(TIMEOUT, [vm])
        return _result(client, control, vm, status, known_vm)
    finally:
        client.rm(control)


def _result(client, control, vm, status, known_vm):
    """Interpret the first C/status value seen; it is final (contract F5, F6)."""
    if status == protocol.SNAPSHOT_CREATED:
        names = _list_or_internal(client, control + "/snapid")
        names.sort(key=lambda name: (len(name), name))
        snapid = "".join(client.read("{}/snapid/{}".format(control, name)) for name in names)
        snapuuid = client.read_or(control + "/snapuuid")
        if not snapuuid or (known_vm is not None and not known_vm(snapuuid)):
            raise XapiError(FAILED, [vm])
        return QuiescedSnapshot(snapuuid, snapid)
    if status == protocol.SNAPSHOT_ERROR:
        error = client.read_or(control + "/error")
        if error is None:
            raise XapiError(INTERNAL_ERROR, ["xenstore read {}/error: ENOENT".format(control)])
        code = client.read_or(control + "/error/code", "0")
        if error in VSS_REQUESTER_ERRORS:
            raise XapiError(error, [vm, code])
        raise XapiError(FAILED, [vm, error])
    raise XapiError(INTERNAL_ERROR, ["unexpected result: {!r}".format(status)])


def _list_or_internal(client, path):
    try:
        return client.ls(path)
    except XenstoreNotFound:
        raise XapiError(INTERNAL_ERROR, ["xenstore directory {}: ENOENT".format(path)])
