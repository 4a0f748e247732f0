"""The guest daemon `xe-quiesce run` as its own process, as systemd runs it.

Shared by the xenstore tests, the demo and the bench, so all exercise the real command line.
"""
import os
import signal
import subprocess
import sys

from testbed.waiting import wait_until


class GuestDaemon(object):
    def __init__(self, config, xenstore_args, log_path, env=None):
        self.argv = [sys.executable, "-m", "xe_quiesce.cli", "-v", "run",
                     "--config", config] + list(xenstore_args)
        self.log_path = log_path
        self.env = dict(os.environ, **(env or {}))
        self.process = None

    def start(self):
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env)
        return self

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def wait_for(self, predicate, what, timeout=10.0):
        """Wait until predicate() holds while the daemon runs; if it exits first, fail at
        once with its log (not after the timeout, with no clue)."""
        def check():
            if not self.alive():
                raise AssertionError("the guest daemon exited ({}) waiting for {}:\n{}".format(
                    self.process.returncode, what, self.log()))
            return predicate()
        return wait_until(check, timeout, what)

    def log(self):
        with open(self.log_path, errors="replace") as handle:
            return handle.read()

    def stop(self, timeout=15):
        """SIGTERM (the daemon thaws first if frozen), SIGKILL if it hangs; the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None
