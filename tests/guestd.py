"""The guest daemon `xe-quiesce run` as its own process, as systemd runs it.

Shared by the xenstore tests and the demo, so both exercise the real command line.
"""
import os
import signal
import subprocess
import sys


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
