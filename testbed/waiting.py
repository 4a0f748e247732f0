"""Waiting in tests and bench: for a condition (with a deadline and a message saying what
failed), and for a process told to stop."""
import subprocess
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


def stop_process(process, grace):
    """SIGTERM `process` (a Popen) if it still runs, SIGKILL after `grace` s; reaped."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
