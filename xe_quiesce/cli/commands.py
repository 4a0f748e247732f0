"""The `xe-quiesce` commands (click 6.7 and newer); cli/main.py is the entry point.

Only what every command needs is imported here; the session, journal and daemon modules
load in the commands that use them. `xe-quiesce thaw` runs while the guest is frozen,
so its start-up is part of the frozen window.
"""
import json
import os
import sys
import time

import click

from .. import __version__
from ..config import load_config, session_timeout
from ..core import logbuffer
from ..entry import run_main
from ..errors import QuiesceError, require_root
from ..triggers import control
from .fast import CONTROL_MARGIN, output
from .frozen import frozen
from .hooks import hooks
from .options import config_option, journal_for, json_option, on_frozen_file
from .run import serve


def _root_config(config_file):
    """The configuration of a command that freezes, thaws or reads the run directory: not
    being root is said first, before anything the configuration could say."""
    require_root()
    return load_config(config_file)


def _ask_daemon(config, what, without):
    """The running daemon's answer to `what`; without(): the answer when none runs."""
    try:
        return control.request(config.state.run_dir, what, CONTROL_MARGIN)
    except control.NoDaemon:
        return without()


def _emit(data, as_json, human):
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


@click.group()
@click.version_option(__version__, prog_name="xe-quiesce")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose):
    """Quiesce this Xen guest's filesystems for application-consistent snapshots."""
    logbuffer.setup_logging(verbose)


@cli.command()
@config_option
@json_option
@click.option("--root", default="/", metavar="DIR",
              help="Read /proc and /sys under DIR (a tree captured from another guest).")
def plan(config_file, as_json, root):
    """Show what a snapshot would freeze, in which order, and what is skipped and why."""
    from ..core.session import make_plan

    if not os.path.isfile(os.path.join(root, "proc/self/mountinfo")):
        raise QuiesceError("--root {}: no proc/self/mountinfo under it (not a tree captured "
                           "from a guest)".format(root))
    config = load_config(config_file)
    if root == "/":
        journal_for(config)
    _emit(make_plan(config, root=root).to_dict(), as_json, _print_plan)


def _print_plan(data):
    click.echo("Would freeze {} filesystem(s); those not ordered below freeze "
               "concurrently.".format(len(data["filesystems"])))
    width = max([24] + [len(fs["mount_point"]) for fs in data["filesystems"]])
    row = "  {:<%d} {:<6} {:<12} {}" % width
    if data["filesystems"]:
        click.echo(row.format("MOUNT POINT", "FSTYPE", "VBDS", "BLOCK STACK"))
    for fs in data["filesystems"]:
        vbds = ",".join(str(vbd) for vbd in fs["vbds"]) or "-"
        click.echo(row.format(fs["mount_point"], fs["fstype"], vbds, fs["stack"]))
    if data["order"]:
        click.echo("Order:")
        for edge in data["order"]:
            click.echo("  {} before {}: {}".format(edge["first"], edge["then"], edge["reason"]))
    pseudo = [skip for skip in data["skipped"] if skip["reason"].startswith("pseudo")]
    shown = [skip for skip in data["skipped"] if skip not in pseudo]
    if shown:
        click.echo("Skipped:")
        for skip in shown:
            click.echo("  {:<24} {:<8} {}".format(skip["mount_point"], skip["fstype"],
                                                   skip["reason"]))
    if pseudo:
        click.echo("Also skipped: {} pseudo filesystem mounts ({}); --json lists them.".format(
            len(pseudo), ", ".join(sorted({skip["fstype"] for skip in pseudo}))))


@cli.command()
@config_option
@json_option
@click.option("--timeout", type=float, metavar="S",
              help="Thaw by itself after S seconds (default: [freeze] max-frozen).")
def freeze(config_file, as_json, timeout):
    """Freeze now and return; `thaw` or the deadline thaws.

    Through the running daemon when there is one, so that one owner ever freezes;
    otherwise this process freezes, leaves the guard holding the deadline, and exits.
    """
    config = _root_config(config_file)
    timeout = session_timeout(timeout, config.freeze.max_frozen, "--timeout")
    try:
        summary = control.request(config.state.run_dir, "freeze",
                                  config.freeze.max_frozen + CONTROL_MARGIN, timeout=timeout)
    except control.NoDaemon:
        from ..core.session import QuiesceSession  # before anything freezes
        from ..protocol import CLI

        session = QuiesceSession(config, CLI, journal=journal_for(config))
        summary = session.start(timeout)
        session.detach()
    if on_frozen_file(sys.stdout, summary["frozen"]):
        # `xe-quiesce freeze >> /var/log/backup.log` with /var frozen: the write would wait
        # for the thaw, and the backup script with it, until the deadline.
        if not on_frozen_file(sys.stderr, summary["frozen"]):
            click.echo("xe-quiesce: frozen (session {}); the summary is not written to "
                       "standard output, a file on a filesystem now frozen".format(
                           summary["session"]), err=True)
        return
    _emit(summary, as_json, _print_frozen)


def _print_frozen(summary):
    click.echo("Frozen: {} (session {}); thawed by `xe-quiesce thaw` or in {:.0f} s.".format(
        " ".join(summary["frozen"]) or "nothing", summary["session"],
        summary["deadline"] - time.time()))
    for point in summary["unsupported"]:
        click.echo("  {}: freezing not supported, skipped".format(point))
    for point in summary["busy_tolerated"]:
        click.echo("  {}: already frozen by someone else, left alone".format(point))


@cli.command()
@config_option
@json_option
def thaw(config_file, as_json):
    """Thaw what a session froze (idempotent: nothing frozen is not an error)."""
    config = _root_config(config_file)
    errors, text = output(_ask_daemon(config, "thaw", lambda: _thaw_directly(config)), as_json)
    for line in errors:
        click.echo(line, err=True)
    click.echo(text)


def _thaw_directly(config):
    """No daemon: the journal says what a detached freeze left, and its hooks are undone."""
    from ..core.hooks import HookSet
    from ..core.session import thaw_from_journal

    return thaw_from_journal(journal_for(config), HookSet.load(config))


@cli.command()
@config_option
@json_option
def status(config_file, as_json):
    """Show the daemon, what is frozen now, the time left, and each trigger's last result."""
    data = {"version": __version__}
    config = _root_config(config_file)
    data["daemon"] = _ask_daemon(config, "status", lambda: {"running": False})
    data.update(journal_for(config).status())
    _emit(data, as_json, _print_status)


def _print_status(data):
    daemon = data["daemon"]
    if not daemon.get("running"):
        click.echo("Daemon: not running (freeze and thaw act directly).")
    else:
        click.echo("Daemon: running, pid {}.".format(daemon.get("pid")))
        for line in daemon.get("lines", []):
            click.echo("  " + line)
    active = data["active"]
    if active:
        click.echo("Frozen by a {} session ({}): {}; {:.0f} s left.".format(
            active["trigger"], active["session"], " ".join(active["mounts"]) or "-",
            active["seconds_left"]))
    else:
        click.echo("Nothing frozen.")
    for trigger, last in sorted(data["last"].items()):
        click.echo("Last {} session {}: {}{}".format(
            trigger, last.get("session"), last.get("result"),
            " ({})".format(last["message"]) if last.get("message") else ""))


@cli.command()
@click.option("--xenstore", "uri", metavar="URI",
              help="xenbus (default), xenbus:PATH or unix:PATH (a dom0 xenstored socket); "
                   "default: [xenstore] uri.")
@click.option("--domain-path", metavar="PATH",
              help="Use this domain home instead of reading `domid` (needed on a dom0 "
                   "socket); default: [xenstore] domain-path.")
@config_option
def run(uri, domain_path, config_file):
    """Serve quiesce requests: the host's over xenstore, Xen Orchestra's sync hook, and
    the local CLI's over the control socket (systemd Type=notify daemon).

    A session left by a crashed daemon is reconciled at start.
    """
    serve(uri, domain_path, config_file)


cli.add_command(hooks)
cli.add_command(frozen)


def main():
    run_main(cli, "xe-quiesce")
