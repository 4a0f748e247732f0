"""The XAPI host plugin `xe-quiesce`: the companion's operations for any XenAPI client.

XAPI runs /etc/xapi.d/plugins/xe-quiesce for `host.call_plugin(host, "xe-quiesce",
fn, args)`; that script hands `FUNCTIONS` to `XenAPIPlugin.dispatch`, which calls
`fn(session, args)` with the caller's session and a string-to-string args map, and
returns the string result (or, for an exception, XENAPI_PLUGIN_FAILURE with its
message) to the caller.

    snapshot  args vm (uuid or name-label), name, timeout (s), snapshot_timeout (s),
              fallback (crash-consistent); returns the snapshot's uuid
    check     args vm; returns the check report as JSON
              or args all=true: the pool's running VMs (check --all), as JSON;
              all=here: this host's only (what check --all asks of each other host)
"""
import json

from . import companion, fleet, xapi_role
from .xenapi_ops import HostError, api_errors, rebind

SNAPSHOT_ARGS = ("vm", "name", "timeout", "snapshot_timeout", "fallback")


def _args(args, known, need_vm=True):
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise HostError("unknown argument(s) {} (known: {})".format(
            ", ".join(unknown), ", ".join(known)))
    if need_vm and not args.get("vm"):
        raise HostError("the argument vm (a VM uuid or name-label) is required")
    return args


def _api(session, settings):
    # The caller's session, spoken to where the settings say XAPI is (tests only).
    return rebind(session, settings.xapi_url).xenapi


def _seconds(args, key, default):
    try:
        return float(args.get(key) or default)
    except ValueError:
        raise HostError("{} must be a number of seconds, not {!r}".format(key, args[key]))


def snapshot(session, args):
    args = _args(args, SNAPSHOT_ARGS)
    settings = companion.Settings.from_env()
    timeout = _seconds(args, "timeout", xapi_role.STATUS_TIMEOUT)
    snapshot_timeout = _seconds(args, "snapshot_timeout", companion.SNAPSHOT_TIMEOUT)
    with api_errors("snapshot of {}".format(args["vm"])):
        outcome = companion.snapshot(_api(session, settings), settings, args["vm"],
                                     name=args.get("name") or None, timeout=timeout,
                                     fallback=args.get("fallback") or None,
                                     snapshot_timeout=snapshot_timeout)
    return outcome.uuid


ALL_VALUES = ("true", fleet.HERE)


def check(session, args):
    every = args.get("all")
    if every is not None:
        args = _args(args, ("all",), need_vm=False)
        if every not in ALL_VALUES:
            raise HostError("all must be one of {}, not {!r}".format(
                ", ".join(ALL_VALUES), every))
        settings = companion.Settings.from_env()
        with api_errors("check of the pool"):
            report = fleet.fleet(_api(session, settings), settings,
                                 here_only=every == fleet.HERE)
        return json.dumps(report, sort_keys=True)
    args = _args(args, ("vm", "all"))
    settings = companion.Settings.from_env()
    with api_errors("check of {}".format(args["vm"])):
        report = companion.check(_api(session, settings), settings, args["vm"])
    return json.dumps(report, sort_keys=True)


FUNCTIONS = {"snapshot": snapshot, "check": check}
