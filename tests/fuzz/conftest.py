"""The fault suite's rigs (the xenstore and XO tests' own) and its figures, printed after
the test summary."""
from tests.fuzz.figures import lines
from tests.test_guest_agent import rig  # noqa: F401 (a fixture)
from tests.test_xo_and_control import xo  # noqa: F401 (a fixture)


def pytest_terminal_summary(terminalreporter):
    shown = lines()
    if shown:
        terminalreporter.section("fault and fuzz suite: figures reached")
        for line in shown:
            terminalreporter.write_line(line)
