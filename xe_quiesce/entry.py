"""The entry-point rule every command of the project shares, guest and dom0: a user's
error is one line and exit status 1, never a traceback.

A module of its own, beside errors.py, so that xe-quiesce-host uses it without the
guest's command line (the host RPM ships it).
"""
import logging
import sys

import click

from .errors import QuiesceError, error_line

# click 8.2+ raises this for a bare group command; its message is the help.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


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
        _fail(error_line(prog_name, error))
    except Exception as error:
        logging.getLogger(prog_name).debug("unexpected error", exc_info=True)
        _fail(error_line(prog_name, error))
    # click 7+ returns the exit code of --help or --version; click 6 exits itself.
    sys.exit(result if isinstance(result, int) else 0)


def _fail(line):
    click.echo(line, err=True)
    sys.exit(1)
