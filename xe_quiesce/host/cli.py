"""`xe-quiesce-host`: quiesced snapshots from dom0 (click 6.7 and newer).

Runs on the host where the VM runs, as root: it speaks to XAPI over its local socket
and to the guest over this host's xenstore.
"""
import ipaddress
import json
import logging
import signal
import sys
import threading
import types

import click

from .. import __version__
from ..entry import run_main
from . import companion, fleet, relay, xapi_role
from .xenapi_ops import XAPI_URL_ENV, HostError, api_errors, open_session


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
@click.argument("vm", required=False)
@click.option("--all", "every", is_flag=True,
              help="Every running VM of the pool, one line each: agent, XO trigger, the "
                   "last quiesced snapshot.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_obj
def check(settings, vm, every, as_json):
    """Show whether VM's guest agent is there and what a snapshot would include.

    With --all: the pool's running VMs; exit status 2 when a VM that carries an
    xo:notify-on-snapshot tag cannot be quiesced.
    """
    if bool(vm) == every:
        raise HostError("give a VM, or --all")
    if every:
        with _session(settings) as api, api_errors("check of the pool"):
            report = fleet.fleet(api, settings)
        click.echo(json.dumps(report, indent=2, sort_keys=True) if as_json
                   else "\n".join(fleet.lines(report)))
        if fleet.cannot_quiesce(report):
            sys.exit(2)
        return
    with _session(settings) as api, api_errors("check of {}".format(vm)):
        report = companion.check(api, settings, vm)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        print_report(report)
    if not report["quiesced_snapshot"]["possible"]:
        sys.exit(2)


def _networks(ctx, param, values):
    try:
        return [ipaddress.ip_network(value, strict=False) for value in values]
    except ValueError as error:
        raise click.BadParameter(str(error))


RELAY_ENV = "XE_QUIESCE_RELAY_"


@cli.command("relay")
@click.option("--allow-from", multiple=True, metavar="NET", callback=_networks,
              envvar=RELAY_ENV + "ALLOW_FROM",
              help="An address or network of the XO servers that may call (repeat; "
                   "the variable: separated by spaces).")
@click.option("--secret-file", metavar="FILE", default="", envvar=RELAY_ENV + "SECRET_FILE",
              help="A file with the shared secret XO sends as a Bearer token (root's, mode "
                   "600). With neither this nor --allow-from the relay does not start.")
@click.option("--port", type=click.IntRange(0, 65535), default=relay.PORT,
              show_default=True, envvar=RELAY_ENV + "PORT",
              help="The HTTPS port, the same on every host of the pool.")
@click.option("--address", metavar="IP", default="", envvar=RELAY_ENV + "ADDRESS",
              help="Listen on this address only (default: every address, IPv4 and IPv6).")
@click.option("--cert-file", metavar="FILE", default="", envvar=RELAY_ENV + "CERT_FILE",
              help="A certificate (PEM) instead of the self-signed one; with --key-file.")
@click.option("--key-file", metavar="FILE", default="", envvar=RELAY_ENV + "KEY_FILE")
@click.option("--tls-dir", metavar="DIR", default=relay.TLS_DIR, show_default=True,
              envvar=RELAY_ENV + "TLS_DIR",
              help="Where the self-signed certificate is made on first start.")
@click.option("--sync-timeout", type=float, default=relay.SYNC_TIMEOUT, metavar="S",
              show_default=True, envvar=RELAY_ENV + "SYNC_TIMEOUT",
              help="Seconds /sync waits for the guest to freeze (XO waits 60).")
@click.option("--hold", type=float, default=relay.HOLD, metavar="S", show_default=True,
              envvar=RELAY_ENV + "HOLD",
              help="Seconds the guest stays frozen waiting for /post-sync; the guest's "
                   "own [freeze] max-frozen bounds it too.")
@click.pass_obj
def relay_command(settings, allow_from, secret_file, port, address, cert_file, key_file,
                  tls_dir, sync_timeout, hold):
    """Serve Xen Orchestra's sync hook for this host's VMs, over xenstore (HTTPS).

    Tag a VM xo:notify-on-snapshot=https://<any pool host>:<port>/?vm=<VM uuid>:
    XO's /sync freezes the guest through its xe-quiesce agent, /post-sync thaws it
    and tags XO's snapshot `quiesced`. VMs running on another host are redirected
    to the relay there. The guest needs no network listener.
    """
    if not sync_timeout > 0 or not hold > 0:
        raise HostError("--sync-timeout and --hold must be positive numbers of seconds")
    logging.getLogger().setLevel(logging.INFO)
    options = types.SimpleNamespace(allow_from=allow_from, secret_file=secret_file, port=port,
                                    address=address, cert_file=cert_file, key_file=key_file,
                                    tls_dir=tls_dir)
    if relay.off_reason(options):  # before anything else is read
        raise HostError(relay.off_reason(options))
    service = relay.Relay(options, settings, sync_timeout=sync_timeout, hold=hold)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    service.start()
    try:
        while not stop.wait(3600):
            pass
    finally:
        service.stop()


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
