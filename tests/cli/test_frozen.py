"""`xe-quiesce frozen -- COMMAND` without a daemon, on real loop filesystems.

COMMAND is a small Python probe (its own process, as an admin's backup command is) that
records, from inside the window, whether the filesystems are frozen and what its
environment says; the daemon case is in tests/triggers/test_xo_and_control.py.
"""
import json
import signal
import subprocess
import sys

import pytest

from testbed.loopfs import is_frozen
from testbed.waiting import wait_until
from tests import REPO
from xe_quiesce.cli import frozen as cli_frozen

PROBE = r"""
import json, os, signal, sys, time
sys.path.insert(0, {repo!r})
from testbed.loopfs import is_frozen
from testbed.waiting import wait_until

mounts, record, mode = sys.argv[1].split(), sys.argv[2], sys.argv[3]

def note(**data):
    with open(record, "a") as handle:
        handle.write(json.dumps(data) + "\n")

def on_term(*_):
    # Told to stop at the deadline: wait (no time limit) until the thaw has happened, by
    # a write that blocks while frozen (a FIFREEZE probe would race the thaw).
    for point in mounts:
        with open(os.path.join(point, "after-sigterm"), "w") as handle:
            handle.write("written")
    note(event="thawed-while-running")
    if mode == "linger":
        while True:
            time.sleep(1)  # outlives the grace: SIGKILL
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
# The output first: a test that stops COMMAND once it is "running" must not cut a print
# in two (with PYTHONUNBUFFERED its text and its newline are two writes).
print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
note(event="running", frozen=[is_frozen(point) for point in mounts],
     env={{k: v for k, v in os.environ.items() if k.startswith("XE_QUIESCE_")}})
if mode in ("linger", "stop"):
    while True:
        time.sleep(1)
sys.exit(int(mode))
"""


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text(PROBE.format(repo=REPO))
    record = tmp_path / "record.jsonl"

    def command(mounts, mode):
        return ["--", sys.executable, "-B", str(path), " ".join(mounts), str(record), mode]

    def events():
        return [json.loads(line) for line in record.read_text().splitlines()]

    def events_so_far():
        return record.exists() and events()

    command.events = events
    command.events_so_far = events_so_far
    return command


def test_runs_the_command_frozen_thaws_and_exits_with_its_status(
        loopfs, write_config, xe_quiesce, probe):
    a, b = loopfs("ext4", name="a"), loopfs("xfs", name="b")
    mounts = [a.mount_point, b.mount_point]
    config = write_config(mounts, max_frozen=60)

    result = xe_quiesce("frozen", "--config", config, *probe(mounts, "3"))

    assert result.returncode == 3, result.stderr
    assert result.stdout == "to stdout\n" and "to stderr\n" in result.stderr
    running = probe.events()[0]
    assert running["frozen"] == [True, True]
    assert running["env"]["XE_QUIESCE_TRIGGER"] == "cli"
    assert running["env"]["XE_QUIESCE_MOUNTS"].split() == mounts
    assert not is_frozen(a.mount_point) and not is_frozen(b.mount_point)
    status = json.loads(xe_quiesce("status", "--json", "--config", config).stdout)
    assert status["active"] is None
    assert status["last"]["cli"]["session"] == running["env"]["XE_QUIESCE_SESSION"]
    assert status["last"]["cli"]["result"] == "thawed"


def test_output_for_a_frozen_filesystem_is_kept_until_the_thaw(
        loopfs, write_config, probe):
    """`xe-quiesce frozen -- CMD >> LOG` with LOG on a filesystem it freezes: CMD's
    writes do not block it, and LOG gets them after the thaw."""
    fs = loopfs("ext4")
    config = write_config([fs.mount_point], max_frozen=60)
    log_path = fs.path("backup.log")
    with open(log_path, "a") as log:
        result = subprocess.run(
            [sys.executable, "-m", "xe_quiesce.cli", "frozen", "--config", config] +
            probe([fs.mount_point], "0"), stdout=log, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert probe.events()[0]["frozen"] == [True]
    with open(log_path) as log:
        assert log.read() == "to stdout\n"


def test_a_command_past_the_deadline_is_stopped_and_the_thaw_does_not_wait(
        loopfs, write_config, xe_quiesce, probe):
    fs = loopfs("ext4")
    config = write_config([fs.mount_point], max_frozen=60)

    result = xe_quiesce("frozen", "--timeout", "1", "--config", config,
                        *probe([fs.mount_point], "linger"))

    assert result.returncode == cli_frozen.DEADLINE_STATUS, result.stderr
    assert "outlived the deadline: thawed, sent SIGTERM, then SIGKILL" in result.stderr
    # The probe saw the thaw while it was still running (before its SIGKILL).
    assert [e["event"] for e in probe.events()] == ["running", "thawed-while-running"]
    assert not is_frozen(fs.mount_point)
    assert result.stdout == "to stdout\n"


def test_a_command_that_stops_on_sigterm_is_not_killed(loopfs, write_config, xe_quiesce,
                                                       probe):
    fs = loopfs("ext4")
    config = write_config([fs.mount_point], max_frozen=60)
    result = xe_quiesce("frozen", "--timeout", "1", "--config", config,
                        *probe([fs.mount_point], "stop"))
    assert result.returncode == cli_frozen.DEADLINE_STATUS
    assert result.stderr.rstrip().endswith("outlived the deadline: thawed, sent SIGTERM")
    assert not is_frozen(fs.mount_point)


def test_sigterm_to_us_thaws_at_once_and_passes_it_on(loopfs, write_config, probe):
    """The admin (or a service manager) stopping `xe-quiesce frozen` thaws now; COMMAND
    gets the same signal; the exit status says which."""
    fs = loopfs("ext4")
    config = write_config([fs.mount_point], max_frozen=60)
    frozen = subprocess.Popen(
        [sys.executable, "-m", "xe_quiesce.cli", "frozen", "--config", config] +
        probe([fs.mount_point], "stop"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True)
    try:
        wait_until(lambda: probe.events_so_far(), 30, "the command running frozen")
        frozen.send_signal(signal.SIGTERM)
        out, _ = frozen.communicate(timeout=30)
    finally:
        if frozen.poll() is None:
            frozen.kill()
            frozen.wait()
    assert frozen.returncode == 128 + signal.SIGTERM
    assert [e["event"] for e in probe.events()] == ["running", "thawed-while-running"]
    assert out == "to stdout\n" and not is_frozen(fs.mount_point)


def test_a_missing_command_freezes_nothing(loopfs, write_config, xe_quiesce):
    fs = loopfs("ext4")
    config = write_config([fs.mount_point])
    result = xe_quiesce("frozen", "--config", config, "--", "no-such-command-xeq", "x")
    assert result.returncode == cli_frozen.NOT_FOUND_STATUS
    assert result.stderr == ("xe-quiesce: no-such-command-xeq: command not found "
                             "(nothing frozen)\n")
    status = json.loads(xe_quiesce("status", "--json", "--config", config).stdout)
    assert status["last"] == {}


def test_a_timeout_above_max_frozen_is_one_line(write_config, xe_quiesce):
    config = write_config(["/nonexistent"], max_frozen=10)
    result = xe_quiesce("frozen", "--timeout", "11", "--config", config, "--", "true")
    assert result.returncode == 1
    assert result.stderr == ("xe-quiesce: error: --timeout must be between 0 and [freeze] "
                             "max-frozen (10 s)\n")


def test_no_module_is_imported_inside_the_window(loopfs, config_for, monkeypatch):
    """What the window needs is loaded before the freeze (an import may read or write a
    frozen filesystem)."""
    fs = loopfs("ext4")
    config = config_for([fs.mount_point])
    seen = {}
    start, thaw = cli_frozen.DirectHold.start, cli_frozen.DirectHold.thaw

    def record_start(self, timeout):
        summary = start(self, timeout)
        seen["frozen"] = is_frozen(fs.mount_point)
        seen["before"] = set(sys.modules)
        return summary

    def record_thaw(self):
        seen["at_thaw"] = set(sys.modules)
        return thaw(self)

    monkeypatch.setattr(cli_frozen.DirectHold, "start", record_start)
    monkeypatch.setattr(cli_frozen.DirectHold, "thaw", record_thaw)
    window = cli_frozen.Window(["true"], direct_output=False)
    try:
        status = cli_frozen._run(config, window, None)
    finally:
        window.close()
    assert status == 0 and seen["frozen"] is True
    assert seen["at_thaw"] - seen["before"] == set()
    assert not is_frozen(fs.mount_point)
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


def test_a_failure_once_frozen_thaws_at_once(loopfs, config_for, monkeypatch):
    """Anything that fails after the freeze (here: building the command's environment)
    thaws before the error leaves _run, not at the guard's deadline."""
    fs = loopfs("ext4")
    config = config_for([fs.mount_point])
    seen = {}
    start = cli_frozen.DirectHold.start

    def record_start(self, timeout):
        summary = start(self, timeout)
        seen["frozen"] = is_frozen(fs.mount_point)
        return summary

    def broken_environment(*_):
        raise RuntimeError("environment broke")

    monkeypatch.setattr(cli_frozen.DirectHold, "start", record_start)
    monkeypatch.setattr(cli_frozen, "hook_environment", broken_environment)
    window = cli_frozen.Window(["true"], direct_output=False)
    try:
        with pytest.raises(RuntimeError, match="environment broke"):
            cli_frozen._run(config, window, None)
    finally:
        window.close()
    assert seen["frozen"] is True
    assert not is_frozen(fs.mount_point)
