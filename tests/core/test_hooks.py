"""Application hooks: order, undo, bounds, refusal rules, and their place in a session."""
import json
import logging
import os
import sys
import time

import psutil
import pytest

from testbed.loopfs import is_frozen, run
from xe_quiesce.config import load_config, parse_config
from xe_quiesce.core.hooks import KILL_GRACE, OUTPUT_LIMIT, HookSet
from xe_quiesce.core.session import QuiesceSession
from xe_quiesce.errors import HookError

ENV = {"XE_QUIESCE_SESSION": "s1", "XE_QUIESCE_TRIGGER": "cli",
       "XE_QUIESCE_DEADLINE": "0", "XE_QUIESCE_MOUNTS": "/a /b"}


class Bed(object):
    """A hooks directory whose hooks append "NAME ACTION" to one call log."""

    def __init__(self, root):
        self.dir = root / "hooks.d"
        self.dir.mkdir(mode=0o755)
        self.log = root / "calls"
        self.log.write_text("")

    def hook(self, name, body="", mode=0o755):
        path = self.dir / name
        path.write_text('#!/bin/sh\necho "{} $1" >> {}\n{}'.format(name, self.log, body))
        path.chmod(mode)
        return path

    def calls(self):
        return self.log.read_text().splitlines()

    def section(self, timeout=5, **per_hook):
        text = "\n[hooks]\ndir = {}\ntimeout = {}\n".format(self.dir, timeout)
        for name, value in per_hook.items():
            text += "[hook:{}]\ntimeout = {}\n".format(name.replace("_", "-"), value)
        return text

    def load(self, timeout=5, **per_hook):
        return HookSet.load(parse_config(self.section(timeout, **per_hook)))


@pytest.fixture
def bed(tmp_path):
    return Bed(tmp_path)


def later(seconds=60):
    return time.time() + seconds


def test_freeze_in_name_order_thaw_in_reverse_leftovers_ignored(bed):
    for name in ("20-b", "05-c", "10-a"):
        bed.hook(name)
    leftovers = ["30-d~", "40-e.bak", "41-e.orig", "50-f.dpkg-old", "51-f.dpkg-dist",
                 "60-g.sample", "70-h.rpmnew", "71-h.rpmsave", ".80-hidden"]
    for name in leftovers:
        bed.hook(name)
    bed.hook("90-not-executable", mode=0o644)
    hooks = bed.load()
    assert [hook.name for hook in hooks.hooks] == ["05-c", "10-a", "20-b"]
    assert hooks.problems() == []
    ignored = {entry["name"]: entry["reason"] for entry in hooks.ignored}
    assert set(ignored) == set(leftovers) | {"90-not-executable"}
    assert ignored["90-not-executable"] == "not executable"
    ran = hooks.freeze(ENV, later())
    assert ran == ["05-c", "10-a", "20-b"]
    assert hooks.thaw(ran, ENV) == []
    assert bed.calls() == ["05-c freeze", "10-a freeze", "20-b freeze",
                           "20-b thaw", "10-a thaw", "05-c thaw"]


def test_missing_directory_means_no_hooks(tmp_path):
    hooks = HookSet.load(parse_config("[hooks]\ndir = {}\n".format(tmp_path / "none")))
    assert hooks.hooks == [] and hooks.problems() == []
    assert hooks.freeze(ENV, later()) == []


def test_contract_environment_stdin_process_group(bed, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_SECRET", "do-not-leak")
    out = tmp_path / "seen"
    bed.hook("10-env", 'env > {0}.env\ncat > {0}.stdin\nps -o pgid= -p $$ > {0}.pgid\n'
             'echo $$ > {0}.pid\n'.format(out))
    deadline = later()
    env = dict(ENV, XE_QUIESCE_DEADLINE="{:.0f}".format(deadline))
    assert bed.load().freeze(env, deadline) == ["10-env"]
    seen = dict(line.split("=", 1) for line in (tmp_path / "seen.env").read_text().splitlines()
                if "=" in line)
    for key, value in env.items():
        assert seen[key] == value
    assert "AGENT_SECRET" not in seen
    assert seen["PATH"].startswith("/usr/local/sbin")
    assert (tmp_path / "seen.stdin").read_text() == ""
    assert (tmp_path / "seen.pgid").read_text().strip() == (
        tmp_path / "seen.pid").read_text().strip()


def test_a_failing_freeze_aborts_exactly_the_hooks_that_ran(bed):
    bed.hook("10-a")
    bed.hook("20-b", "echo 'cannot lock the database' >&2\nexit 3\n")
    bed.hook("30-c")
    hooks = bed.load()
    with pytest.raises(HookError, match="hook 20-b freeze: failed with exit status 3"):
        hooks.freeze(ENV, later())
    assert bed.calls() == ["10-a freeze", "20-b freeze", "20-b abort", "10-a abort"]
    failed = [r for r in hooks.results if r.name == "20-b" and r.action == "freeze"][0]
    assert failed.output["stderr"] == ["cannot lock the database"]


def test_timeout_kills_the_hooks_whole_process_group(bed, tmp_path):
    pids = tmp_path / "pids"
    bed.hook("10-slow", 'if [ "$1" = freeze ]; then sleep 300 & echo $! > {0}; '
             'sleep 300; fi\n'.format(pids))
    hooks = bed.load(timeout=30, **{"10_slow": 1})
    assert hooks.hooks[0].timeout == 1
    started = time.monotonic()
    with pytest.raises(HookError, match="hook 10-slow freeze: timed out after 1 s; its "
                                        "process group was killed"):
        hooks.freeze(ENV, later())
    assert time.monotonic() - started < 1 + KILL_GRACE
    sleeper = int(pids.read_text())
    end = time.monotonic() + 2
    while _alive(sleeper) and time.monotonic() < end:
        time.sleep(0.05)
    assert not _alive(sleeper), "the forked sleeper must die with its hook"
    assert bed.calls() == ["10-slow freeze", "10-slow abort"]


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_thaw_goes_on_past_a_failing_and_a_hanging_hook(bed):
    bed.hook("10-a")
    bed.hook("20-hangs", '[ "$1" = thaw ] && sleep 300\nexit 0\n')
    bed.hook("30-fails", '[ "$1" = thaw ] && exit 1\nexit 0\n')
    bed.hook("40-d")
    hooks = bed.load(**{"20_hangs": 1})
    ran = hooks.freeze(ENV, later())
    problems = hooks.thaw(ran, ENV)
    assert problems == ["hook 30-fails thaw: failed with exit status 1",
                        "hook 20-hangs thaw: timed out after 1 s; its process group was killed"]
    assert bed.calls()[4:] == ["40-d thaw", "30-fails thaw", "20-hangs thaw", "10-a thaw"]


def test_a_leftover_holding_the_output_pipes_does_not_delay_the_agent(bed, tmp_path):
    """A lock holder left running on purpose keeps stdout open; the agent must not wait."""
    pid = tmp_path / "holder"
    bed.hook("10-holder", 'sleep 60 & echo $! > {}\necho started\n'.format(pid))
    hooks = bed.load()
    started = time.monotonic()
    try:
        assert hooks.freeze(ENV, later()) == ["10-holder"]
        assert time.monotonic() - started < 2
        assert hooks.results[0].output["stdout"] == ["started"]
        assert _alive(int(pid.read_text())), "a successful hook's children are left alone"
    finally:
        os.kill(int(pid.read_text()), 9)


def test_output_is_drained_bounded_and_logged(bed):
    bed.hook("10-chatty", "head -c 3000000 /dev/zero | tr '\\0' x\necho\necho last words >&2\n")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("xe_quiesce.hooks")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        hooks = bed.load(timeout=10)
        assert hooks.freeze(ENV, later()) == ["10-chatty"]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    stdout = hooks.results[0].output["stdout"]
    assert stdout[0].startswith("[") and "earlier bytes dropped" in stdout[0]
    assert sum(len(line) for line in stdout[1:]) <= OUTPUT_LIMIT
    messages = [record.getMessage() for record in records]
    assert "hook 10-chatty freeze stderr: last words" in messages
    assert any(message.startswith("hook 10-chatty freeze: ok") for message in messages)


@pytest.mark.parametrize("case", ["hook-group-writable", "hook-not-root", "dir-writable",
                                  "parent-writable", "link-target-dir-writable"])
def test_insecure_hooks_are_refused_before_anything_runs(bed, tmp_path, case):
    bed.hook("10-fine")
    hook = bed.hook("20-suspect")
    if case == "hook-group-writable":
        hook.chmod(0o775)
    elif case == "hook-not-root":
        os.chown(str(hook), 1000, 0)
    elif case == "dir-writable":
        bed.dir.chmod(0o757)
    elif case == "parent-writable":
        # Not sticky: anyone could rename hooks.d away and put their own in its place.
        tmp_path.chmod(0o777)
    else:
        elsewhere = tmp_path / "shared"
        elsewhere.mkdir()
        elsewhere.chmod(0o777)
        target = elsewhere / "hook"
        target.write_text("#!/bin/sh\nexit 0\n")
        target.chmod(0o755)
        hook.unlink()
        hook.symlink_to(target)
    hooks = bed.load()
    assert hooks.problems(), case
    with pytest.raises(HookError, match="refusing to run hooks"):
        hooks.freeze(ENV, later())
    assert bed.calls() == []
    tmp_path.chmod(0o700)


def test_a_sticky_world_writable_parent_is_accepted(tmp_path):
    """/tmp itself: nobody but root can replace root's entries in a sticky directory."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    bed = Bed(sticky)
    bed.hook("10-a")
    assert bed.load().problems() == []
    sticky.chmod(0o1777)
    bed.dir.chmod(0o1777)
    assert bed.load().problems(), "the hooks directory itself must not be writable"


def test_insecure_hook_fails_the_session_before_anything_is_frozen(bed, loopfs, config_for):
    fs = loopfs("ext4")
    bed.hook("10-a", mode=0o777)
    config = config_for([fs.mount_point], extra=bed.section())
    session = QuiesceSession(config, "cli")
    with pytest.raises(HookError, match="writable by group or others"):
        session.start()
    assert not is_frozen(fs.mount_point)
    assert bed.calls() == []
    assert session.state["result"] == "failed"


def test_session_runs_freeze_hooks_before_and_thaw_hooks_after(bed, loopfs, config_for):
    """A hook that writes to the planned filesystem would block if it ran while frozen."""
    fs = loopfs("ext4")
    bed.hook("10-app", 'echo "$1" >> {}\n'.format(fs.path("app.log")))
    config = config_for([fs.mount_point], extra=bed.section(timeout=3))
    session = QuiesceSession(config, "xapi")
    summary = session.start()
    try:
        assert summary["hooks"] == ["10-app"]
        assert is_frozen(fs.mount_point)
        before = set(sys.modules)
    finally:
        result = session.thaw()
    assert set(sys.modules) - before == set(), "no import while frozen or thawing"
    assert result["result"] == "thawed" and result["message"] == ""
    assert open(fs.path("app.log")).read().split() == ["freeze", "thaw"]


def test_hook_blocked_on_a_frozen_filesystem_does_not_hang_past_the_deadline(
        bed, loopfs, config_for, tmp_path):
    """The hook sleeps in the kernel (unkillable until the thaw): the agent abandons it."""
    planned, other = loopfs("ext4", name="planned"), loopfs("ext4", name="other")
    pid = tmp_path / "writer"
    bed.hook("10-writes", '[ "$1" = freeze ] && echo $$ > {} && echo x > {}\nexit 0\n'.format(
        pid, other.path("blocked")))
    config = config_for([planned.mount_point], max_frozen=3, extra=bed.section(timeout=30))
    session = QuiesceSession(config, "xapi")
    run("fsfreeze", "-f", other.mount_point)
    try:
        started = time.monotonic()
        with pytest.raises(HookError, match="reached the session deadline"):
            session.start()
        assert time.monotonic() - started < 3 + KILL_GRACE + 1
        assert not is_frozen(planned.mount_point)
        assert bed.calls() == ["10-writes freeze", "10-writes abort"]
    finally:
        run("fsfreeze", "-u", other.mount_point)
        # The abandoned hook finishes its write now; it must be gone before the unmount.
        if pid.exists():
            try:
                psutil.Process(int(pid.read_text())).wait(10)
            except psutil.NoSuchProcess:
                pass


def test_cli_lists_runs_and_thaw_runs_thaw_hooks(bed, loopfs, write_config, xe_quiesce):
    fs = loopfs("ext4")
    bed.hook("10-a")
    bed.hook("20-b")
    bed.hook("20-b.dpkg-old")
    config = write_config([fs.mount_point], max_frozen=30, extra=bed.section())
    listed = xe_quiesce("hooks", "--json", "--config", config)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert [hook["name"] for hook in data["hooks"]] == ["10-a", "20-b"]
    assert data["ignored"] == [{"name": "20-b.dpkg-old", "reason": "editor or package leftover"}]
    dry = xe_quiesce("hooks", "--run", "thaw", "--config", config)
    assert dry.returncode == 0, dry.stderr
    assert "hook 20-b thaw: ok" in dry.stdout
    assert bed.calls() == ["20-b thaw", "10-a thaw"]
    assert not is_frozen(fs.mount_point)

    assert xe_quiesce("freeze", "--config", config).returncode == 0
    assert is_frozen(fs.mount_point)
    thaw = xe_quiesce("thaw", "--json", "--config", config)
    assert thaw.returncode == 0, thaw.stderr
    assert bed.calls()[2:] == ["10-a freeze", "20-b freeze", "20-b thaw", "10-a thaw"]

    bed.hook("30-bad", mode=0o766)
    refused = xe_quiesce("hooks", "--config", config)
    assert refused.returncode == 1
    assert "30-bad" in refused.stdout and "REFUSED" in refused.stdout
    assert "every session fails" in refused.stderr
    frozen = xe_quiesce("freeze", "--config", config)
    assert frozen.returncode == 1 and "refusing to run hooks" in frozen.stderr
    assert not is_frozen(fs.mount_point)
    assert load_config(config).hooks.dir == str(bed.dir)
