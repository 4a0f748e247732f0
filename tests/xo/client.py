"""Xen Orchestra's own sync-hook client, for tests: driver.mjs run in Node.

XO's package is installed once per lock file with `npm ci` into
/var/cache/xe-quiesce/xo/<hash of package-lock.json>/ (a clean clone installs it once,
later runs reuse it); `python3 tests/xo/client.py install` does it (mk/xo.mk runs that).

    run = XoRun({"tags": ["xo:notify-on-snapshot=https://127.0.0.1:1727"],
                 "syncHookTimeout": 3000})
    run.wait_for("xapi-call", timeout=60)   # XO's VM.snapshot call is running
    events = run.finish(timeout=60)          # every event, once XO's code is done

Events are dicts as driver.mjs prints them (see its header).
"""
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
LOCK = os.path.join(HERE, "package-lock.json")
DRIVER = os.path.join(HERE, "driver.mjs")
INSTALLED_FILES = ("package.json", "package-lock.json", "unused")
CACHE = "/var/cache/xe-quiesce/xo"
PACKAGE = "@xen-orchestra/xapi"


def lock_hash():
    with open(LOCK, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


def install_dir():
    return os.path.join(CACHE, lock_hash())


def modules_dir():
    return os.path.join(install_dir(), "node_modules")


def installed():
    return os.path.exists(os.path.join(modules_dir(), PACKAGE, "vm.mjs"))


def install():
    """`npm ci` into a fresh folder, renamed into place only once complete."""
    if installed():
        return modules_dir()
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise RuntimeError("XO's client tests need `{}` (Node.js 18 or newer with npm)".format(
                tool))
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(prefix="install-", dir=CACHE)
    try:
        for name in INSTALLED_FILES:
            source = os.path.join(HERE, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(work, name))
            else:
                shutil.copy(source, work)
        # --install-links copies the local `unused` stand-in instead of linking to it.
        subprocess.run(["npm", "ci", "--ignore-scripts", "--install-links", "--no-audit",
                        "--no-fund", "--loglevel=error"], cwd=work, check=True)
        try:
            os.rename(work, install_dir())
        except OSError:
            if not installed():  # not a concurrent install that won the race
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return modules_dir()


class XoRun(object):
    """One call of XO's code (snapshot, checkpoint or _httpHook) in a Node process."""

    def __init__(self, config):
        if not installed():
            raise RuntimeError("XO's client package is not installed: run `make xo-client`")
        self.config = config
        self.events = []
        self._cursor = 0
        self._queue = queue.Queue()
        self.process = subprocess.Popen(
            ["node", DRIVER, modules_dir(), json.dumps(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr = []
        self._err_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._err_reader.start()

    def _read(self):
        for line in self.process.stdout:
            try:
                self._queue.put(json.loads(line))
            except ValueError:
                self._queue.put({"event": "bad-line", "line": line})
        self._queue.put(None)

    def _read_stderr(self):
        for line in self.process.stderr:
            self._stderr.append(line)

    def _next(self, timeout):
        try:
            event = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("XO's driver: no event within {} s; so far {}; stderr {}".format(
                timeout, self.events, "".join(self._stderr)[-2000:]))
        if event is None:
            self._queue.put(None)
            return None
        self.events.append(event)
        return event

    def wait_for(self, name, timeout, **fields):
        """The next event called `name` (with these field values) after the one the
        previous wait_for returned; events before it are kept in self.events."""
        while True:
            while self._cursor < len(self.events):
                event = self.events[self._cursor]
                self._cursor += 1
                if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                    return event
            if self._next(timeout) is None:
                raise AssertionError("XO's driver ended before {} {}: {}; stderr {}".format(
                    name, fields, self.events, "".join(self._stderr)[-2000:]))

    def release(self):
        """Let a stub XAPI call configured with waitStdin answer."""
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self, timeout):
        """Every event, once the driver ended (XO's detached /post-sync settled too)."""
        self.wait_for("done", timeout)
        self.process.wait(timeout)
        return self.events

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def first(self, name, **fields):
        for event in self.events:
            if event["event"] == name and all(event.get(k) == v for k, v in fields.items()):
                return event
        return None


def run(config, timeout):
    """Run XO's code to its end and return its events."""
    xo = XoRun(config)
    try:
        return xo.finish(timeout)
    finally:
        xo.kill()


if __name__ == "__main__":
    if sys.argv[1:] == ["install"]:
        try:
            print(install())
        except (RuntimeError, OSError, subprocess.CalledProcessError) as error:
            sys.exit("installing XO's client package failed: {}".format(error))
    elif sys.argv[1:2] == ["run"]:
        for item in run(json.loads(sys.argv[2]), timeout=float(sys.argv[3:4] and sys.argv[3]
                                                                or 120)):
            print(json.dumps(item))
    else:
        sys.exit("usage: client.py install | run CONFIG_JSON [TIMEOUT]")
