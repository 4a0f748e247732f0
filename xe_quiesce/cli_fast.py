"""`xe-quiesce thaw` without click when the daemon answers: its start-up is in the window.

Two-command scripts (`freeze`, their own steps, `thaw`) start `thaw` while everything is
frozen, so every millisecond of its start-up is frozen time; click's import alone is
about half of it. This path takes exactly the words `thaw`, `--json` and `--config FILE`
(or `--config=FILE`), imports only the configuration and the control-socket client, and
prints what click's `thaw` prints. Anything else (other commands, -v, --help, a word it
does not know) and a thaw without a daemon (the journal, the hooks) go to click's
commands, so usage errors and every other path stay exactly theirs.
"""
import json
import sys

# Seconds a control request may take beyond the work itself (every command's requests).
CONTROL_MARGIN = 30.0


def parse(args):
    """(config_file, as_json) for `thaw [--json] [--config FILE]`, else None."""
    if not args or args[0] != "thaw":
        return None
    config_file, as_json = None, False
    words = iter(args[1:])
    for word in words:
        if word == "--json":
            as_json = True
        elif word == "--config":
            config_file = next(words, None)
            if config_file is None:
                return None
        elif word.startswith("--config="):
            config_file = word[len("--config="):]
        else:
            return None
    return config_file, as_json


def output(closed, as_json):
    """(lines for stderr, text for stdout) of a thaw's answer; click's command prints the
    same."""
    errors = list((closed or {}).get("deferred_log", []))
    result = closed or {"result": "nothing-frozen", "message": "nothing was frozen"}
    if as_json:
        return errors, json.dumps(result, indent=2, sort_keys=True)
    return errors, "{}: {}".format(result["result"], result.get("message") or "thawed")


def fast_thaw(args, prog_name="xe-quiesce"):
    """Serve `thaw` through the daemon and return its exit status; None: use click."""
    parsed = parse(args)
    if parsed is None:
        return None
    from . import control
    from .config import load_config
    from .errors import QuiesceError

    config_file, as_json = parsed
    try:
        config = load_config(config_file)
        closed = control.request(config.state.run_dir, "thaw", CONTROL_MARGIN)
    except control.NoDaemon:
        return None
    except QuiesceError as error:
        sys.stderr.write("{}: error: {}\n".format(prog_name, error))
        return 1
    errors, text = output(closed, as_json)
    for line in errors:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0
