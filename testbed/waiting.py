"""Polling for a condition in tests and bench, with a deadline and a message saying what failed."""
import time


def wait_until(predicate, timeout=10.0, what="condition"):
    """Return predicate()'s first truthy value; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out waiting for " + what)
