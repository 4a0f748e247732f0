"""`xe-quiesce-host`: quiesced snapshots from dom0 (click 6.7 and newer).

Runs on the host where the VM runs, as root: it speaks to XAPI over its local socket
and to the guest over this host's xenstore.
"""
import json
import logging
import sys

import click

from .. import __version__
from ..cli_options import run_main
from . import companion, xapi_role
from .xenapi_ops import XAPI_URL_ENV, api_errors, open_session


@click.group()
@click.version_option(__version__, prog_name="xe-quiesce-host")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.option("--xapi-url", metavar="URL", envvar=XAPI_URL_ENV,
              help="A XenAPI endpoint instead of this host's XAPI socket (tests, debugging; "
                   "logs in as root without a password). Also ${}.".format(XAPI_URL_ENV))
@click.option("--xenstore", metavar="URI", envvar=companion.XENSTORE_ENV,
              help="This host's xenstored (default {}). Also ${}.".format(
                  companion.DOM0_XENSTORE, companion.XENSTORE_ENV))
@click.pass_context
def cli(ctx, verbose, xapi_url, xenstore):
    """Quiesced snapshots of the guests of this XenServer / XCP-ng host.

    Plays the host side that XAPI and snapwatchd no longer have: the guest's
    xe-quiesce agent freezes its filesystems while XAPI snapshots the VM.
    """
    # The roles' own warnings repeat what the one-line error says; -v shows them.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR,
                        format="xe-quiesce-host: %(levelname)s: %(message)s")
    ctx.obj = companion.Settings.from_env(xapi_url=xapi_url, xenstore=xenstore)


@cli.command()
@click.argument("vm")
@click.option("--name", metavar="NAME",
              help="The snapshot's name (default: the VM's name and the time).")
@click.option("--timeout", type=float, default=xapi_role.STATUS_TIMEOUT, metavar="S",
              show_default=True,
              help="Seconds the guest may take to quiesce and report, as XAPI's "
                   "snapshot_with_quiesce_timeout.")
@click.option("--snapshot-timeout", type=float, default=companion.SNAPSHOT_TIMEOUT,
              metavar="S", show_default=True,
              help="Seconds VM.snapshot may take while the guest is frozen, as snapwatchd "
                   "allowed; the guest's [freeze] max-frozen still bounds the whole hold.")
@click.option("--fallback", type=click.Choice([companion.CRASH_CONSISTENT]),
              help="If the guest cannot quiesce, take a plain (crash-consistent) snapshot "
                   "and say so, instead of failing.")
@click.pass_obj
def snapshot(settings, vm, name, timeout, snapshot_timeout, fallback):
    """Take a quiesced snapshot of VM (uuid or name-label); print its uuid.

    The snapshot is tagged `quiesced` and its other-config holds the guest's
    manifest (what was frozen). On failure nothing is left behind.
    """
    with _session(settings) as api, api_errors("snapshot of {}".format(vm)):
        outcome = companion.snapshot(api, settings, vm, name=name, timeout=timeout,
                                     fallback=fallback, snapshot_timeout=snapshot_timeout)
    if not outcome.quiesced:
        click.echo("xe-quiesce-host: warning: {}; took a crash-consistent snapshot "
                   "instead (tagged {})".format(outcome.reason, companion.CRASH_CONSISTENT),
                   err=True)
    click.echo(outcome.uuid)


@cli.command()
@click.argument("vm")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_obj
def check(settings, vm, as_json):
    """Show whether VM's guest agent is there and what a snapshot would include."""
    with _session(settings) as api, api_errors("check of {}".format(vm)):
        report = companion.check(api, settings, vm)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        print_report(report)
    if not report["quiesced_snapshot"]["possible"]:
        sys.exit(2)


def print_report(report):
    vm, agent = report["vm"], report["agent"]
    click.echo("VM {} ({}): {}".format(vm["name"], vm["uuid"], vm["power_state"]))
    advertised = " ".join("{}={}".format(key, value)
                          for key, value in sorted(agent["advertised"].items()))
    click.echo("Guest agent: advertises {}; xe-quiesce version {}, state {}".format(
        advertised or "nothing", agent["version"] or "-", agent["state"] or "-"))
    click.echo("A snapshot would include {} disk(s):".format(len(report["disks"])))
    for disk in report["disks"]:
        click.echo("  device {:<3} VDI {} {!r} {} MiB".format(
            disk["userdevice"], disk["vdi"], disk["name"], disk["virtual_size"] >> 20))
    for disk in report["skipped"]:
        click.echo("  device {:<3} {} skipped ({})".format(
            disk["userdevice"], disk["type"], "empty" if not disk["vdi"] else "not a disk"))
    verdict = report["quiesced_snapshot"]
    click.echo("Quiesced snapshot: {}".format(
        "possible" if verdict["possible"] else "not possible: " + verdict["reason"]))


class _session(object):
    """A logged-in XenAPI (session.xenapi), logged out at the end."""

    def __init__(self, settings):
        self.session = open_session(settings.xapi_url)

    def __enter__(self):
        return self.session.xenapi

    def __exit__(self, *exc):
        try:
            self.session.xenapi.session.logout()
        except Exception:  # the session may be gone with XAPI; the result stands
            logging.getLogger(__name__).debug("logout failed", exc_info=True)


def main():
    run_main(cli, "xe-quiesce-host")


if __name__ == "__main__":
    main()
