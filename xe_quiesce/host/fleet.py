"""`xe-quiesce-host check --all`: which running VMs of the pool get a quiesced backup.

Why: with 100 VMs, an admin cannot see tonight's coverage one `check VM` at a time.
One row per running guest: the agent as it advertises itself in the guest's xenstore,
the XO trigger its tags select (read as XO's `_httpHook` reads them: the last
`xo:notify-on-snapshot` tag wins), and the newest snapshot tagged `quiesced`.

A host sees only its own xenstore, so the VMs of the other hosts come from the plugin
on each of them (`check` with `all=here`), over XAPI's host.call_plugin.
"""
import calendar
import json
import time
import urllib.parse

from .. import protocol
from ..xenstore import XenstoreClient, XenstoreNotFound
from .companion import QUIESCED_TAG, guest_home
from .xenapi_ops import HostError, describe, local_host_uuid, xenapi

XO_TAG = "xo:notify-on-snapshot"
GUEST_LISTENER, RELAY, NONE = "guest listener", "relay", "none"
HERE = "here"


def fleet(api, settings, here_only=False):
    """{"vms": rows, sorted by host and name}; `here_only`: this host's VMs only."""
    here = api.host.get_by_uuid(local_host_uuid(settings.inventory))
    hosts = api.host.get_all_records()
    vms = api.VM.get_all_records()
    running = sorted((vm for vm in vms.values() if _is_running_guest(vm)),
                     key=lambda vm: (vm["resident_on"] != here, hosts.get(
                         vm["resident_on"], {}).get("name_label", ""), vm["name_label"]))
    rows, others = [], {}
    with XenstoreClient(settings.xenstore) as client:
        for vm in running:
            if vm["resident_on"] == here:
                rows.append(_row(vm, hosts[here], vms, _agent_here(client, vm)))
            elif not here_only:
                others.setdefault(vm["resident_on"], []).append(vm)
    for host_ref, host_vms in sorted(others.items(), key=lambda item: item[0]):
        rows += _rows_from(api, host_ref, hosts.get(host_ref, {}), host_vms, vms)
    return {"vms": rows}


def _is_running_guest(vm):
    return (vm["power_state"] == "Running" and not vm["is_a_template"]
            and not vm["is_a_snapshot"] and not vm["is_control_domain"])


def _agent_here(client, vm):
    agent = {"advertised": False, "version": None, "state": None, "problem": ""}
    try:
        home = guest_home(client, int(vm["domid"]), vm["uuid"])
    except (HostError, ValueError, XenstoreNotFound) as error:
        agent["problem"] = "cannot read the guest's xenstore: {}".format(error)
        return agent
    agent["advertised"] = protocol.advertises(lambda key: client.read_or(home + "/" + key))
    agent["version"] = client.read_or(home + "/" + protocol.AGENT_VERSION)
    agent["state"] = client.read_or(home + "/" + protocol.AGENT_STATE)
    return agent


def _rows_from(api, host_ref, host, host_vms, vms):
    """The other host's rows, from its plugin; if it cannot answer, rows saying so."""
    try:
        answer = json.loads(api.host.call_plugin(host_ref, "xe-quiesce", "check",
                                                 {"all": HERE}))
        return answer["vms"]
    except (xenapi().Failure, ValueError, KeyError) as error:
        text = describe(error) if isinstance(error, xenapi().Failure) else str(error)
        problem = "cannot ask host {}'s xe-quiesce plugin: {}".format(
            host.get("name_label", host_ref), text)
    agent = {"advertised": None, "version": None, "state": None, "problem": problem}
    return [_row(vm, host, vms, agent) for vm in host_vms]


def _row(vm, host, vms, agent):
    trigger, url, problem = xo_trigger(vm["tags"], vm["uuid"])
    if trigger != NONE and not problem:
        if agent["problem"]:
            problem = agent["problem"]
        elif not agent["advertised"]:
            problem = "the guest does not advertise control/feature-quiesce (no agent)"
    return {"uuid": vm["uuid"], "name": vm["name_label"],
            "host": host.get("name_label", ""),
            "agent": {key: agent[key] for key in ("advertised", "version", "state")},
            "trigger": trigger, "hook_url": url,
            "last_quiesced": _newest_quiesced(vm, vms), "problem": problem}


def xo_trigger(tags, vm_uuid):
    """(trigger, URL or None, problem) as XO's _httpHook picks: the last XO tag wins.

    A plain tag: XO calls the guest's own listener (port 1727 of its first reported
    address). A tag with a URL naming `vm=` this VM: the relay. XO's URL parser
    refusing the URL stops the snapshot itself ("Invalid URL").
    """
    for tag in reversed(tags):
        if tag == XO_TAG:
            return GUEST_LISTENER, None, ""
        if tag.startswith(XO_TAG + "="):
            url = tag[len(XO_TAG) + 1:]
            try:
                parts = urllib.parse.urlsplit(url)
                usable = parts.scheme in ("http", "https") and parts.hostname and (
                    parts.port is None or parts.port > 0)  # .port raises for a bad one
            except ValueError as error:
                usable, url = False, "{} ({})".format(url, error)
            if not usable:
                return GUEST_LISTENER, url, "the tag's URL is not a usable http(s) URL"
            named = urllib.parse.parse_qs(parts.query).get("vm")
            if named is None:
                return GUEST_LISTENER, url, ""
            if [value.lower() for value in named] != [vm_uuid.lower()]:
                return RELAY, url, "the tag's relay URL names vm={}, not this VM".format(
                    ",".join(named))
            return RELAY, url, ""
    return NONE, None, ""


def _newest_quiesced(vm, vms):
    newest = None
    for ref in vm["snapshots"]:
        snap = vms.get(ref)
        if snap is None or QUIESCED_TAG not in snap["tags"]:
            continue
        when = xapi_time(snap.get("snapshot_time"))
        if newest is None or (when or 0) > (newest["time"] or 0):
            newest = {"uuid": snap["uuid"], "time": when}
    if newest is not None:
        newest["age_seconds"] = None if newest["time"] is None else max(
            0, int(time.time() - newest["time"]))
    return newest


def xapi_time(value):
    """XAPI's DateTime (`20261204T02:41:45Z`) as a Unix time; None if unreadable."""
    text = str(getattr(value, "value", value) or "")
    for layout in ("%Y%m%dT%H:%M:%SZ", "%Y%m%dT%H:%M:%S"):
        try:
            return calendar.timegm(time.strptime(text, layout))
        except ValueError:
            continue
    return None


def cannot_quiesce(report):
    """The rows of VMs that carry an XO tag and will not get a quiesced snapshot."""
    return [row for row in report["vms"] if row["trigger"] != NONE and row["problem"]]


def age(seconds):
    if seconds is None:
        return "?"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    if days:
        return "{}d{}h".format(days, hours)
    if hours:
        return "{}h{}m".format(hours, minutes)
    return "{}m".format(minutes) if minutes else "{}s".format(rest)


def lines(report):
    """One line per VM, then the problems, for the terminal."""
    out = []
    for row in report["vms"]:
        agent = row["agent"]
        if agent["advertised"] is None:
            seen = "agent ?"
        elif agent["advertised"]:
            seen = "agent {} {}".format(agent["version"] or "?", agent["state"] or "?")
        else:
            seen = "no agent"
        last = row["last_quiesced"]
        quiesced = "never" if last is None else "{} ago ({})".format(
            age(last["age_seconds"]), last["uuid"])
        out.append("{} {} on {}: {}; XO trigger: {}; last quiesced: {}{}".format(
            row["uuid"], row["name"], row["host"] or "?", seen, row["trigger"], quiesced,
            "; CANNOT QUIESCE: " + row["problem"] if row["trigger"] != NONE and row["problem"]
            else ""))
    return out
