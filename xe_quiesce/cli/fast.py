"""`xe-quiesce thaw` and `xe-quiesce run` without click: start-up time and idle memory.

Two-command scripts (`freeze`, their own steps, `thaw`) start `thaw` while everything is
frozen, so every millisecond of its start-up is frozen time, and click's import alone is
about half of it. The daemon (`run`) lives for the guest's lifetime, and click is
3-4 MiB of its idle memory. These paths take exactly their command's own words (`thaw
[--json] [--config FILE]`, `[-v] run [--xenstore URI] [--domain-path PATH] [--config
FILE]`, also as --option=VALUE) and print what click's commands print. Anything else
(other commands, --help, --version, a word they do not know) and a thaw without a daemon
(the journal, the hooks) go to click's commands, so usage errors and every other path
stay exactly theirs.
"""
import json
import sys

# Seconds a control request may take beyond the work itself (every command's requests).
CONTROL_MARGIN = 30.0
PROG = "xe-quiesce"
THAW_OPTIONS = {"--config": "config_file"}
RUN_OPTIONS = {"--config": "config_file", "--xenstore": "uri",
               "--domain-path": "domain_path"}


def parse(args, command, options, flags=None, verbose_ok=False):
    """The keyword arguments of `[-v] command [options]`, or None when the words are not
    exactly that (click's parser then answers them)."""
    words = list(args)
    verbose = False
    if verbose_ok and words and words[0] in ("-v", "--verbose"):
        verbose = True
        words.pop(0)
    if not words or words[0] != command:
        return None
    parsed = {name: None for name in options.values()}
    parsed.update({name: False for name in (flags or {}).values()})
    if verbose_ok:
        parsed["verbose"] = verbose
    rest = iter(words[1:])
    for word in rest:
        name, _, value = word.partition("=")
        if name in options and (value or "=" in word):
            parsed[options[name]] = value
        elif word in options:
            parsed[options[word]] = next(rest, None)
            if parsed[options[word]] is None:
                return None
        elif flags and word in flags:
            parsed[flags[word]] = True
        else:
            return None
    return parsed


def output(closed, as_json):
    """(lines for stderr, text for stdout) of a thaw's answer; click's command prints the
    same."""
    errors = list((closed or {}).get("deferred_log", []))
    result = closed or {"result": "nothing-frozen", "message": "nothing was frozen"}
    if as_json:
        return errors, json.dumps(result, indent=2, sort_keys=True)
    return errors, "{}: {}".format(result["result"], result.get("message") or "thawed")


def _error(error):
    """The one line and exit status of click's commands (entry.run_main)."""
    from ..errors import error_line

    sys.stderr.write(error_line(PROG, error) + "\n")
    return 1


def fast_thaw(args):
    """Serve `thaw` through the daemon and return its exit status; None: use click."""
    parsed = parse(args, "thaw", THAW_OPTIONS, {"--json": "as_json"})
    if parsed is None:
        return None
    from ..config import load_config
    from ..errors import require_root
    from ..triggers import control

    try:
        require_root()
        config = load_config(parsed["config_file"])
        closed = control.request(config.state.run_dir, "thaw", CONTROL_MARGIN)
    except control.NoDaemon:
        return None
    except Exception as error:  # one line, never a traceback
        return _error(error)
    errors, text = output(closed, parsed["as_json"])
    for line in errors:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0


def fast_run(args):
    """Run the daemon and return its exit status; None: use click."""
    parsed = parse(args, "run", RUN_OPTIONS, verbose_ok=True)
    if parsed is None:
        return None
    import logging

    from ..core import logbuffer
    from ..errors import QuiesceError
    from .run import serve

    logbuffer.setup_logging(parsed.pop("verbose"))
    try:
        serve(**parsed)
    except Exception as error:  # one line, never a traceback; -v logs it
        if not isinstance(error, QuiesceError):
            logging.getLogger(PROG).debug("unexpected error", exc_info=True)
        return _error(error)
    return 0
