"""What the guest's commands share: the --config and --json options, the root check.

A module of its own so that the subcommands (run, hooks) use the same definitions
without importing cli/main.py, which registers them. The entry-point rule (one line,
never a traceback) is entry.py's, shared with xe-quiesce-host.
"""
import os

import click

from ..config import ENV_VAR
from ..errors import RootRequired


def config_option(command):
    return click.option(
        "--config", "config_file", metavar="FILE", envvar=ENV_VAR,
        help="Configuration file (default /etc/xe-quiesce/xe-quiesce.conf, or ${}).".format(
            ENV_VAR))(command)


def json_option(command):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON.")(command)


def require_root():
    """Commands that freeze, thaw, or read the run directory (0700, root's)."""
    if os.geteuid() != 0:
        raise RootRequired()
