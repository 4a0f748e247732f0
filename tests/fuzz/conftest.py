"""The fault suite's figures, printed after the test summary."""
from tests.fuzz.figures import lines


def pytest_terminal_summary(terminalreporter):
    shown = lines()
    if shown:
        terminalreporter.section("fault and fuzz suite: figures reached")
        for line in shown:
            terminalreporter.write_line(line)
