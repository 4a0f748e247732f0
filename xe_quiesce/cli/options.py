"""What every command line of the project shares: the --config and --json options and
the entry-point rule that user errors are one line, never a traceback.

A module of its own so that the subcommands (run, hooks) and xe-quiesce-host use the
same definitions without importing cli.py, which registers them.
"""
import logging
import os
import sys

import click

from ..config import ENV_VAR
from ..errors import QuiesceError, RootRequired


def config_option(command):
    return click.option(
        "--config", "config_file", metavar="FILE", envvar=ENV_VAR,
        help="Configuration file (default /etc/xe-quiesce/xe-quiesce.conf, or ${}).".format(
            ENV_VAR))(command)


def json_option(command):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print machine-readable JSON.")(command)


# click 8.2+ raises this for a bare group command; its message is the help.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def require_root():
    """Commands that freeze, thaw, or read the run directory (0700, root's)."""
    if os.geteuid() != 0:
        raise RootRequired()


def run_main(command, prog_name):
    """Run a click command; every error ends it with one line and exit status 1.

    A QuiesceError is ours and says what to do. A usage error (unknown option, a value
    of the wrong type) is click's, said in one line with where the help is. Anything
    else is a fault of ours or of the system: still one line (its traceback is logged at
    debug level, shown by -v).
    """
    try:
        result = command.main(prog_name=prog_name, standalone_mode=False)
    except NO_ARGS_IS_HELP as error:  # click 8.2+; older versions print it themselves
        click.echo(error.format_message())
        sys.exit(0)
    except click.UsageError as error:
        where = error.ctx.command_path if error.ctx is not None else prog_name
        _fail("{}: error: {} (see `{} --help`)".format(
            prog_name, " ".join(error.format_message().split()), where))
    except click.ClickException as error:
        _fail("{}: error: {}".format(prog_name, " ".join(error.format_message().split())))
    except click.Abort:
        _fail("{}: aborted".format(prog_name))
    except QuiesceError as error:
        _fail("{}: {}{}".format(prog_name, error.label, error))
    except Exception as error:
        logging.getLogger(prog_name).debug("unexpected error", exc_info=True)
        _fail("{}: error: {}: {}".format(prog_name, type(error).__name__, error))
    # click 7+ returns the exit code of --help or --version; click 6 exits itself.
    sys.exit(result if isinstance(result, int) else 0)


def _fail(line):
    click.echo(line, err=True)
    sys.exit(1)
