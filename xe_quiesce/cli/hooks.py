"""`xe-quiesce hooks`: list the application hooks, or run them without freezing.

The dry run is for admins writing a hook: it runs exactly what a session would run, with
the same environment, timeouts and refusal rules, but freezes nothing. It does not import
the `cli` module (which registers this command), so `python -m xe_quiesce.cli` works.
"""
import json
import time
import uuid

import click

from ..config import load_config
from ..core.hooks import ACTIONS, HookSet, hook_environment
from ..errors import HookError
from .options import config_option, json_option


@click.command("hooks")
@config_option
@json_option
@click.option("--run", "action", type=click.Choice(ACTIONS),
              help="Run every hook with this argument now, without freezing anything.")
def hooks(config_file, as_json, action):
    """List the hooks in run order with their problems, or --run them as a dry run."""
    config = load_config(config_file)
    hook_set = HookSet.load(config)
    if action:
        _run(config, hook_set, action, as_json)
        return
    data = hook_set.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        _print_hooks(data)
    if data["problems"]:
        raise HookError("{} problem(s): every session fails until they are fixed".format(
            len(data["problems"])))


def _print_hooks(data):
    if not data["hooks"]:
        click.echo("No hooks in {}.".format(data["dir"]))
    else:
        click.echo("Hooks in {} (freeze in this order; thaw and abort in reverse):".format(
            data["dir"]))
    for hook in data["hooks"]:
        click.echo("  {:<28} timeout {:g} s{}".format(
            hook["name"], hook["timeout"], "  REFUSED" if hook["problems"] else ""))
        for problem in hook["problems"]:
            click.echo("      " + problem)
    for entry in data["ignored"]:
        click.echo("  ignored: {} ({})".format(entry["name"], entry["reason"]))
    for problem in data["problems"]:
        if problem.startswith("hooks directory"):
            click.echo("  " + problem)


def _run(config, hook_set, action, as_json):
    from ..core.session import make_plan  # the session's modules load only for a dry run
    from ..protocol import CLI

    deadline = time.time() + config.freeze.max_frozen
    env = hook_environment("dry-run-" + uuid.uuid4().hex[:8], CLI, deadline,
                           [fs.mount_point for fs in make_plan(config).filesystems])
    problems, error = [], None
    try:
        outcome = hook_set.run_all(action, env, deadline)
        if action != "freeze":
            problems = outcome
    except HookError as failure:
        error = failure
    data = {"action": action, "session": env["XE_QUIESCE_SESSION"],
            "results": [result.to_dict() for result in hook_set.results],
            "problems": problems + ([str(error)] if error else [])}
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for result in data["results"]:
            click.echo("{} ({:.1f} s)".format(result["message"], result["duration"]))
        if action == "freeze" and not error and hook_set.hooks:
            click.echo("Locks taken by freeze hooks end at the deadline ({:g} s) or with "
                       "`xe-quiesce hooks --run thaw`.".format(config.freeze.max_frozen))
    if data["problems"]:
        raise HookError("; ".join(data["problems"]))
