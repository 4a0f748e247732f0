"""What the service leaves in the logs: syslog priorities in the journal, one line per
session, and one line (and a non-restarted exit status) when there is no xenbus."""
import logging
import os
import re
import subprocess
import sys

import pytest

from xe_quiesce.cli import run as cli_run
from xe_quiesce.core.logbuffer import JournalFormatter, stderr_is_journal
from xe_quiesce.xenstore import XENBUS_DEVICES

SESSION_LINE = re.compile(r"session \w+ \(trigger cli\): froze (.+); [\d.]+ s from start "
                          r"to end; result ([\w-]+)")


def record(level, msg):
    return logging.makeLogRecord({"levelno": level, "levelname": logging.getLevelName(level),
                                  "msg": msg})


@pytest.mark.parametrize("level,priority", [(logging.CRITICAL, 2), (logging.ERROR, 3),
                                            (logging.WARNING, 4), (logging.INFO, 6),
                                            (logging.DEBUG, 7)])
def test_journal_lines_carry_the_syslog_priority(level, priority):
    line = JournalFormatter("xe-quiesce: %(levelname)s: %(message)s").format(record(level, "x"))
    assert line == "<{}>xe-quiesce: {}: x".format(priority, logging.getLevelName(level))


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path):
    with open(str(tmp_path / "stream"), "w") as stream, open(str(tmp_path / "other"), "w") as other:
        st = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": "{}:{}".format(st.st_dev, st.st_ino)}
        assert stderr_is_journal(environ, stream)
        assert not stderr_is_journal(environ, other)
        assert not stderr_is_journal({}, stream)


def journal_run(tmp_path, *args):
    """The CLI with stderr on a file that $JOURNAL_STREAM names, as under systemd."""
    path = str(tmp_path / "journal-stream")
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        env = dict(os.environ, JOURNAL_STREAM="{}:{}".format(st.st_dev, st.st_ino))
        proc = subprocess.run([sys.executable, "-m", "xe_quiesce.cli"] + list(args),
                              stdout=subprocess.PIPE, stderr=stream, env=env, timeout=60,
                              universal_newlines=True)
    with open(path) as stream:
        return proc, stream.read()


@pytest.mark.skipif(any(os.path.exists(p) for p in XENBUS_DEVICES),
                    reason="this machine has a xenbus device")
def test_run_without_xenbus_logs_one_error_and_exits_with_the_unrestarted_status(
        tmp_path, write_config):
    proc, journal = journal_run(tmp_path, "run", "--config", write_config([]))
    assert proc.returncode == cli_run.NO_XENBUS_STATUS == 6
    assert journal.splitlines() == [
        "<3>xe-quiesce: ERROR: no xenbus device (/dev/xen/xenbus, /proc/xen/xenbus): not a "
        "Xen guest with PV drivers, nothing to serve; exiting with status 6 (not restarted)"]


def test_unit_does_not_restart_that_status_and_skips_without_xenbus():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "init/systemd/xe-quiesce.service")) as handle:
        unit = handle.read().splitlines()
    assert "RestartPreventExitStatus=%d" % cli_run.NO_XENBUS_STATUS in unit
    assert ["ConditionPathExists=|" + path for path in XENBUS_DEVICES] == [
        line for line in unit if line.startswith("ConditionPathExists=")]


def test_a_cli_session_leaves_one_line_with_what_froze_and_the_result(
        tmp_path, loopfs, write_config, xe_quiesce):
    a, b = loopfs("ext4", name="a"), loopfs("xfs", name="b")
    config = write_config([a.mount_point, b.mount_point], max_frozen=30)
    freeze = xe_quiesce("freeze", "--config", config)
    assert freeze.returncode == 0, freeze.stderr
    assert not SESSION_LINE.search(freeze.stderr), "the session is not over yet"
    proc, journal = journal_run(tmp_path, "thaw", "--config", config)
    assert proc.returncode == 0, journal
    lines = [line for line in journal.splitlines() if SESSION_LINE.search(line)]
    assert len(lines) == 1, journal
    assert lines[0].startswith("<6>xe-quiesce: INFO: ")
    froze, result = SESSION_LINE.search(lines[0]).groups()
    assert sorted(froze.split()) == sorted([a.mount_point, b.mount_point])
    assert result == "thawed"


def test_a_failed_session_leaves_one_error_line(tmp_path, loopfs, write_config):
    taken = loopfs("ext4", name="taken")
    subprocess.run(["fsfreeze", "-f", taken.mount_point], check=True)
    try:
        proc, journal = journal_run(tmp_path, "freeze", "--config",
                                    write_config([taken.mount_point]))
    finally:
        subprocess.run(["fsfreeze", "-u", taken.mount_point], check=True)
    assert proc.returncode == 1
    lines = [line for line in journal.splitlines() if SESSION_LINE.search(line)]
    assert len(lines) == 1 and lines[0].startswith("<3>xe-quiesce: ERROR: "), journal
    froze, result = SESSION_LINE.search(lines[0]).groups()
    assert (froze, result) == ("nothing", "failed")
