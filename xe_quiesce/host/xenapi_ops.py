"""The XenAPI side of the dom0 companion: session, the VM and its disks, its snapshots.

On dom0 the session is XAPI's local socket (`XenAPI.xapi_local()`, root without a
password, as sm and the toolstack's own scripts log in). `XE_QUIESCE_XAPI_URL` (or
the CLI's --xapi-url) points it at another XML-RPC endpoint instead: that is how the
tests run the real XenAPI client against their XAPI server. XenAPI is imported on
first use, so that a host without it gets one clear line rather than an ImportError.

Product code: dom0's Python 3.6 (XCP-ng 8.2) and newer.
"""
import contextlib
import socket
import xmlrpc.client

from ..errors import QuiesceError
from ..protocol import UUID_RE
from ..xenstore import XenstoreError

XAPI_URL_ENV = "XE_QUIESCE_XAPI_URL"
ORIGINATOR = "xe-quiesce-host"
INVENTORY = "/etc/xensource-inventory"
NULL_REF = "OpaqueRef:NULL"


class HostError(QuiesceError):
    """A refusal or failure of the dom0 companion; its message is printed as is."""


def xenapi():
    try:
        import XenAPI
    except ImportError:
        raise HostError("the XenAPI Python module is missing (dom0's xapi-core ships it; "
                        "the xe-quiesce-host package bundles a copy)")
    return XenAPI


def describe(failure):
    """A XenAPI Failure as `CODE: param, param` (XAPI's own error code first)."""
    details = [str(item) for item in getattr(failure, "details", [failure])]
    params = [item for item in details[1:] if item]
    return "{}: {}".format(details[0], ", ".join(params)) if params else details[0]


@contextlib.contextmanager
def api_errors(what):
    """XenAPI refusals, XAPI out of reach and xenstore failures as one-line HostErrors."""
    failure = xenapi().Failure
    try:
        yield
    except failure as error:
        raise HostError("{}: XAPI said {}".format(what, describe(error)))
    except (socket.error, xmlrpc.client.Error) as error:
        raise HostError("{}: cannot talk to XAPI: {}".format(what, error))
    except XenstoreError as error:
        raise HostError("{}: xenstore: {}".format(what, error))


def open_session(url=None):
    """A logged-in XenAPI session: XAPI's local socket, or the endpoint at `url`."""
    api = xenapi()
    session = api.Session(url) if url else api.xapi_local()
    with api_errors("cannot log in to XAPI"):
        session.xenapi.login_with_password("root", "", "1.0", ORIGINATOR)
    return session


def rebind(session, url):
    """The same XAPI session handle, spoken to at `url` (a plugin's session under tests)."""
    if not url:
        return session
    other = xenapi().Session(url)
    other._session = session._session  # as XenAPIPlugin.dispatch binds its own session
    return other


def local_host_uuid(inventory=INVENTORY):
    """This host's uuid, from the installer's inventory (INSTALLATION_UUID)."""
    try:
        with open(inventory) as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                if key == "INSTALLATION_UUID":
                    return value.strip("'\"")
    except OSError as error:
        raise HostError("cannot read {} (is this a XenServer/XCP-ng dom0?): {}".format(
            inventory, error.strerror))
    raise HostError("{} has no INSTALLATION_UUID".format(inventory))


def find_vm(api, name):
    """The ref and record of the guest VM `name` (a uuid or a name-label)."""
    if UUID_RE.match(name):
        try:
            ref = api.VM.get_by_uuid(name)
        except xenapi().Failure as error:
            if error.details[0] != "UUID_INVALID":
                raise
        else:
            return ref, api.VM.get_record(ref)
    found = []
    for ref in api.VM.get_by_name_label(name):
        record = api.VM.get_record(ref)
        if not (record["is_a_template"] or record["is_a_snapshot"]
                or record["is_control_domain"]):
            found.append((ref, record))
    if not found:
        raise HostError("no VM has the uuid or name-label {!r}".format(name))
    if len(found) > 1:
        raise HostError("{} VMs are named {!r}; give the uuid: {}".format(
            len(found), name, ", ".join(sorted(record["uuid"] for _, record in found))))
    return found[0]


def check_runs_here(api, record, host_uuid):
    """Refuse what is not a running guest of this host, saying where it runs instead."""
    if record["is_a_template"] or record["is_a_snapshot"] or record["is_control_domain"]:
        raise HostError("{} is not a guest VM (a template, snapshot or control domain)".format(
            record["uuid"]))
    if record["power_state"] != "Running":
        raise HostError("VM {} is {}, not Running: a quiesced snapshot needs the guest "
                        "agent running".format(record["uuid"], record["power_state"]))
    here = api.host.get_by_uuid(host_uuid)
    if record["resident_on"] != here:
        other = api.host.get_record(record["resident_on"])
        raise HostError("VM {} runs on host {} ({}), not on this one: run xe-quiesce-host "
                        "there, or call the plugin on that host (xe host-call-plugin "
                        "host-uuid={} plugin=xe-quiesce fn=snapshot args:vm={})".format(
                            record["uuid"], other["name_label"], other["uuid"],
                            other["uuid"], record["uuid"]))


def disks(api, record):
    """The VM's VBDs as dicts, disks first by userdevice; `vdi` is None when empty.

    A quiesced snapshot covers the non-CD VBDs, the set snapwatchd compared with
    what the guest listed (contract 2.11).
    """
    found = []
    for vbd in record["VBDs"]:
        row = api.VBD.get_record(vbd)
        item = {"userdevice": row["userdevice"], "type": row["type"], "vdi": None,
                "name": "", "virtual_size": 0}
        if row["VDI"] != NULL_REF:
            vdi = api.VDI.get_record(row["VDI"])
            item.update(vdi=vdi["uuid"], name=vdi["name_label"],
                        virtual_size=int(vdi["virtual_size"]))
        found.append(item)
    found.sort(key=lambda item: (item["type"] == "CD", int(item["userdevice"] or 0)))
    return found


def snapshot_disks(api, snapshot):
    """Source VDI uuid -> snapshot VDI uuid, for the disks of the snapshot VM."""
    mapping = {}
    for vbd in api.VM.get_VBDs(snapshot):
        vdi = api.VBD.get_VDI(vbd)
        if vdi == NULL_REF or api.VBD.get_type(vbd) == "CD":
            continue
        record = api.VDI.get_record(vdi)
        if record["snapshot_of"] != NULL_REF:
            mapping[api.VDI.get_uuid(record["snapshot_of"])] = record["uuid"]
    return mapping


def annotate(api, snapshot, tag, other_config):
    api.VM.add_tags(snapshot, tag)
    for key, value in sorted(other_config.items()):
        api.VM.add_to_other_config(snapshot, key, value)


def destroy_snapshot(api, snapshot):
    """Remove a snapshot VM and its disks (VM.destroy leaves VDIs behind).

    Returns what could not be removed, as text; empty when all went.
    """
    problems = []
    vdis = []
    try:
        for vbd in api.VM.get_VBDs(snapshot):
            if api.VBD.get_type(vbd) != "CD" and api.VBD.get_VDI(vbd) != NULL_REF:
                vdis.append(api.VBD.get_VDI(vbd))
        api.VM.destroy(snapshot)
    except xenapi().Failure as error:
        return ["snapshot {}: {}".format(snapshot, describe(error))]
    for vdi in vdis:
        try:
            api.VDI.destroy(vdi)
        except xenapi().Failure as error:
            problems.append("VDI {}: {}".format(vdi, describe(error)))
    return problems
