"""The click-free `thaw` and `run` paths: which command lines they take (the rest go to
click, whose answers the other tests check)."""
import subprocess
import sys

import pytest

from xe_quiesce.cli.fast import RUN_OPTIONS, THAW_OPTIONS, output, parse

THAW_FLAGS = {"--json": "as_json"}


@pytest.mark.parametrize("args, parsed", [
    (["thaw"], dict(config_file=None, as_json=False)),
    (["thaw", "--json"], dict(config_file=None, as_json=True)),
    (["thaw", "--config", "/x.conf", "--json"], dict(config_file="/x.conf", as_json=True)),
    (["thaw", "--config=/x.conf"], dict(config_file="/x.conf", as_json=False)),
    (["thaw", "--config"], None),  # click's usage error
    (["thaw", "--help"], None),
    (["thaw", "extra"], None),
    (["thaw", "--json=1"], None),
    (["-v", "thaw"], None),
    (["freeze"], None),
    ([], None),
])
def test_thaw_takes_only_its_own_words(args, parsed):
    assert parse(args, "thaw", THAW_OPTIONS, THAW_FLAGS) == parsed


@pytest.mark.parametrize("args, parsed", [
    (["run"], dict(config_file=None, uri=None, domain_path=None, verbose=False)),
    (["-v", "run", "--xenstore", "unix:/s", "--domain-path=/local/domain/3",
      "--config", "/c"],
     dict(config_file="/c", uri="unix:/s", domain_path="/local/domain/3", verbose=True)),
    (["--verbose", "run"], dict(config_file=None, uri=None, domain_path=None, verbose=True)),
    (["run", "-v"], None),
    (["run", "--help"], None),
    (["--version"], None),
])
def test_run_takes_only_its_own_words(args, parsed):
    assert parse(args, "run", RUN_OPTIONS, verbose_ok=True) == parsed


def test_output_keeps_the_deferred_log_for_stderr():
    closed = {"result": "thawed", "message": "", "deferred_log": ["a line"]}
    assert output(closed, False) == (["a line"], "thawed: thawed")
    assert output(None, False) == ([], "nothing-frozen: nothing was frozen")
    errors, text = output(None, True)
    assert errors == [] and text.startswith("{\n  \"message\": \"nothing was frozen\"")


def test_the_daemon_starts_without_importing_click():
    """`xe-quiesce run` reaches serve() with its options and no click in memory."""
    code = "\n".join([
        "import sys",
        "from xe_quiesce.cli import main as cli, run as cli_run",
        "cli_run.serve = lambda **kw: print(sorted(kw.items()))",
        "sys.argv = ['xe-quiesce', '-v', 'run', '--config', '/c.conf']",
        "try:",
        "    cli.main()",
        "except SystemExit as end:",
        "    print(end.code, 'click' in sys.modules)",
    ])
    result = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            universal_newlines=True, check=True)
    assert result.stdout.splitlines() == [
        "[('config_file', '/c.conf'), ('domain_path', None), ('uri', None)]", "0 False"]
