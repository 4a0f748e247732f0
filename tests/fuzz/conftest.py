"""The fault suite's xenstore rig (the xenstore tests' own; the XO rig is in
tests/conftest.py) and its figures, printed after the test summary."""
from tests.fuzz.figures import lines
from tests.triggers.test_xapi import rig  # noqa: F401 (a fixture)


def pytest_terminal_summary(terminalreporter):
    shown = lines()
    if shown:
        terminalreporter.section("fault and fuzz suite: figures reached")
        for line in shown:
            terminalreporter.write_line(line)
