"""The click-free `thaw` path: which command lines it takes (the rest go to click)."""
import pytest

from xe_quiesce.cli_fast import output, parse


@pytest.mark.parametrize("args, parsed", [
    (["thaw"], (None, False)),
    (["thaw", "--json"], (None, True)),
    (["thaw", "--config", "/x.conf", "--json"], ("/x.conf", True)),
    (["thaw", "--config=/x.conf"], ("/x.conf", False)),
    (["thaw", "--config"], None),  # click's usage error
    (["thaw", "--help"], None),
    (["thaw", "extra"], None),
    (["-v", "thaw"], None),
    (["freeze"], None),
    ([], None),
])
def test_parse_takes_only_thaw_and_its_own_options(args, parsed):
    assert parse(args) == parsed


def test_output_keeps_the_deferred_log_for_stderr():
    closed = {"result": "thawed", "message": "", "deferred_log": ["a line"]}
    assert output(closed, False) == (["a line"], "thawed: thawed")
    assert output(None, False) == ([], "nothing-frozen: nothing was frozen")
    errors, text = output(None, True)
    assert errors == [] and text.startswith("{\n  \"message\": \"nothing was frozen\"")
