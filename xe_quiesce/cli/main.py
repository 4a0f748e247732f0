"""The `xe-quiesce` command line (click 6.7 and newer).

Only what every command needs is imported here; the session, journal and daemon modules
load in the commands that use them. `xe-quiesce thaw` runs while the guest is frozen,
so its start-up is part of the frozen window.
"""
import json
import os
import stat
import sys
import time

import click

from .. import __version__
from ..config import load_config, session_timeout
from ..core import logbuffer
from ..entry import run_main
from ..errors import QuiesceError
from ..triggers import control
from .hooks import hooks
from .options import config_option, json_option, require_root
from .run import run

# Seconds a control request may take beyond the work itself.
CONTROL_MARGIN = 30.0


def _emit(data, as_json, human):
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        human(data)


def _journal(config, reconcile=True):
    """The journal; leftovers of a dead session are reconciled first, as on every start."""
    from ..core.journal import Journal

    journal = Journal(config.state.run_dir)
    if reconcile:
        try:
            closed = journal.reconcile()
        except PermissionError:
            closed = None  # not root: nothing of ours can be frozen by this user
        if closed:
            click.echo("xe-quiesce: earlier session {} ({}): {}".format(
                closed["session"], closed.get("trigger"), closed["message"]), err=True)
    return journal


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
        _journal(config)
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
    require_root()
    config = load_config(config_file)
    timeout = session_timeout(timeout, config.freeze.max_frozen, "--timeout")
    try:
        summary = control.request(config.state.run_dir, "freeze",
                                  config.freeze.max_frozen + CONTROL_MARGIN, timeout=timeout)
    except control.NoDaemon:
        from ..core.session import QuiesceSession  # before anything freezes
        from ..protocol import CLI

        session = QuiesceSession(config, CLI, journal=_journal(config))
        summary = session.start(timeout)
        session.detach()
    if _on_frozen_file(sys.stdout, summary["frozen"]):
        # `xe-quiesce freeze >> /var/log/backup.log` with /var frozen: the write would wait
        # for the thaw, and the backup script with it, until the deadline.
        if not _on_frozen_file(sys.stderr, summary["frozen"]):
            click.echo("xe-quiesce: frozen (session {}); the summary is not written to "
                       "standard output, a file on a filesystem now frozen".format(
                           summary["session"]), err=True)
        return
    _emit(summary, as_json, _print_frozen)


def _on_frozen_file(stream, mount_points):
    """Whether `stream` is a regular file on one of these frozen filesystems (stat is a
    read: it does not wait for the thaw)."""
    try:
        info = os.fstat(stream.fileno())
        return stat.S_ISREG(info.st_mode) and any(
            os.stat(point).st_dev == info.st_dev for point in mount_points)
    except (AttributeError, OSError, ValueError):  # the freeze has happened: never fail it
        return False


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
    require_root()
    config = load_config(config_file)
    try:
        closed = control.request(config.state.run_dir, "thaw", CONTROL_MARGIN)
    except control.NoDaemon:
        from ..core.hooks import HookSet
        from ..core.session import thaw_from_journal

        closed = thaw_from_journal(_journal(config), HookSet.load(config))
    for line in (closed or {}).get("deferred_log", []):
        click.echo(line, err=True)
    result = closed or {"result": "nothing-frozen", "message": "nothing was frozen"}
    _emit(result, as_json, lambda data: click.echo("{}: {}".format(
        data["result"], data.get("message") or "thawed")))


@cli.command()
@config_option
@json_option
def status(config_file, as_json):
    """Show the daemon, what is frozen now, the time left, and each trigger's last result."""
    require_root()
    config = load_config(config_file)
    try:
        daemon = control.request(config.state.run_dir, "status", CONTROL_MARGIN)
    except control.NoDaemon:
        daemon = {"running": False}
    data = {"version": __version__, "daemon": daemon}
    data.update(_journal(config).status())
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


cli.add_command(run)
cli.add_command(hooks)


def main():
    run_main(cli, "xe-quiesce")


if __name__ == "__main__":
    main()
