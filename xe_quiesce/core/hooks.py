"""Application hooks: the admin's programs that make databases consistent, not just files.

A hook is an executable in `[hooks] dir`, called with one argument: `freeze` (in name
order, before anything is frozen), `thaw` (in reverse, after the thaw) or `abort` (in
reverse, to exactly the hooks that ran `freeze`, when the session fails part-way).

The failures other agents' users suffer are designed out here:
- every run is bounded: a per-hook timeout, and during `freeze` the session deadline;
  on expiry the hook's whole process group is killed, and a process that cannot die
  (blocked in the kernel, e.g. writing to a frozen filesystem) is abandoned, not awaited;
- output goes to pipes drained while the hook runs (no back-pressure), kept in memory up
  to a bound and logged through the package logger, which the session holds while
  frozen; nothing is written to a file;
- a hook left running on purpose (a lock holder) keeps the pipes open: the agent stops
  reading shortly after the hook itself exits instead of waiting for end-of-file;
- a hook the agent would run as root must be as trustworthy as root: owned by root and
  not writable by anybody else, nor replaceable through its directories.

Everything is imported at module load: `thaw` may run right after a thaw, and an import
while frozen could touch a frozen filesystem.
"""
import fnmatch
import logging
import os
import selectors
import signal
import stat
import subprocess
import time

from ..errors import HookError

LOG = logging.getLogger("xe_quiesce.hooks")

ACTIONS = ("freeze", "thaw", "abort")
IGNORED_PATTERNS = ("*~", "*.bak", "*.orig", "*.dpkg-*", "*.rpmnew", "*.rpmsave", "*.sample")
# A hook sees this and the session's XE_QUIESCE_* variables, not the agent's environment.
SAFE_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/",
    "LANG": "C",
    "LC_ALL": "C",
}
OUTPUT_LIMIT = 16 * 1024    # bytes kept per stream (the last ones: errors come last)
DRAIN_GRACE = 0.5           # after a hook exits, how long its leftovers may keep writing
KILL_GRACE = 2.0            # after SIGKILL, how long to wait before abandoning the process
POLL = 0.05


def hook_environment(session_id, trigger, deadline, mount_points):
    """The variables the hook contract promises (docs/hooks.md), built in one place for
    sessions, `xe-quiesce thaw` of a detached freeze, and the `hooks --run` dry run."""
    return {
        "XE_QUIESCE_SESSION": session_id,
        "XE_QUIESCE_TRIGGER": trigger,
        "XE_QUIESCE_DEADLINE": "{:.0f}".format(deadline),
        "XE_QUIESCE_MOUNTS": " ".join(mount_points),
    }


class Hook(object):
    """One runnable hook file; `problems` non-empty means it is refused."""

    def __init__(self, name, path, timeout, problems):
        self.name = name
        self.path = path
        self.timeout = timeout
        self.problems = problems

    def to_dict(self):
        return {"name": self.name, "path": self.path, "timeout": self.timeout,
                "problems": list(self.problems)}


class HookResult(object):
    """What one run of one hook did: `ok`, a one-line `message`, the captured output."""

    def __init__(self, hook, action):
        self.name = hook.name
        self.action = action
        self.ok = False
        self.message = ""
        self.duration = 0.0
        self.output = {}

    def to_dict(self):
        return {"name": self.name, "action": self.action, "ok": self.ok,
                "message": self.message, "duration": round(self.duration, 3)}


def _unsafe(path, st, may_be_sticky=False):
    """Why root must not trust `path`, or None: owner not root, or writable by others.

    A root-owned sticky directory (/tmp) is accepted as a parent: nobody but root can
    rename or delete root's entries in it.
    """
    if st.st_uid != 0:
        return "{} is owned by uid {}, not root".format(path, st.st_uid)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if may_be_sticky and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
            return None
        return "{} is writable by group or others (mode {:04o})".format(
            path, stat.S_IMODE(st.st_mode))
    return None


def directory_problems(directory):
    """Problems of a directory and each of its parents up to /."""
    problems = []
    current = os.path.realpath(directory)
    first = True
    while True:
        try:
            problem = _unsafe(current, os.stat(current), may_be_sticky=not first)
        except OSError as error:
            problem = "{}: {}".format(current, error.strerror)
        if problem:
            problems.append(problem)
        parent = os.path.dirname(current)
        if parent == current:
            return problems
        current, first = parent, False


def file_problems(path, hooks_dir):
    """Problems of a hook file, following a symlink to where the code really is."""
    real = os.path.realpath(path)
    try:
        problem = _unsafe(real, os.stat(real))
    except OSError as error:
        problem = "{}: {}".format(real, error.strerror)
    problems = [problem] if problem else []
    if os.path.dirname(real) != os.path.realpath(hooks_dir):
        problems.extend(directory_problems(os.path.dirname(real)))
    return problems


def ignored_reason(name, st):
    """Why a directory entry is not a hook, or None if it is one."""
    if name.startswith("."):
        return "hidden file"
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_PATTERNS):
        return "editor or package leftover"
    if st is None:
        return "broken symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not st.st_mode & 0o111:
        return "not executable"
    return None


class _Capture(object):
    """Drains a hook's stdout and stderr into bounded buffers while it runs."""

    def __init__(self, proc):
        self.selector = selectors.DefaultSelector()
        self.buffers = {}
        self.dropped = {}
        for stream, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            self.buffers[stream] = bytearray()
            self.dropped[stream] = 0
            self.selector.register(pipe.fileno(), selectors.EVENT_READ, stream)
        self.pipes = (proc.stdout, proc.stderr)

    def until(self, done, end):
        """Read until `done()` or monotonic time `end`; returns whether `done()`."""
        while True:
            if done():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            self.read(min(left, POLL))

    def read(self, timeout):
        if not self.selector.get_map():
            time.sleep(timeout)
            return False
        for key, _events in self.selector.select(timeout):
            data = os.read(key.fd, 65536)
            if not data:
                self.selector.unregister(key.fd)
                continue
            buffer = self.buffers[key.data]
            buffer.extend(data)
            excess = len(buffer) - OUTPUT_LIMIT
            if excess > 0:
                del buffer[:excess]
                self.dropped[key.data] += excess
        return not self.selector.get_map()

    def drain(self, grace):
        """Read what is left, until end-of-file or `grace` seconds (a leftover child)."""
        self.until(lambda: not self.selector.get_map(), time.monotonic() + grace)

    def close(self):
        self.selector.close()
        for pipe in self.pipes:
            pipe.close()

    def text(self):
        out = {}
        for stream, buffer in self.buffers.items():
            lines = bytes(buffer).decode("utf-8", "replace").splitlines()
            if self.dropped[stream]:
                lines.insert(0, "[{} earlier bytes dropped]".format(self.dropped[stream]))
            out[stream] = lines
        return out


class HookSet(object):
    """The hooks of one configuration, in run order, with what is wrong with them."""

    def __init__(self, directory, hooks, ignored, problems):
        self.directory = directory
        self.hooks = hooks
        self.ignored = ignored
        self.dir_problems = problems
        self.results = []
        self._by_name = {hook.name: hook for hook in hooks}

    @classmethod
    def load(cls, config):
        """Scan `[hooks] dir`; a missing directory means no hooks. Never raises for an
        unsafe hook: it is listed with its problems and `freeze` refuses to start."""
        directory = config.hooks.dir
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return cls(directory, [], [], [])
        except OSError as error:
            return cls(directory, [], [], ["{}: {}".format(directory, error.strerror)])
        dir_problems = directory_problems(directory)
        hooks, ignored = [], []
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)
            except OSError:
                st = None
            reason = ignored_reason(name, st)
            if reason:
                ignored.append({"name": name, "reason": reason})
            else:
                hooks.append(Hook(name, path, config.hook_timeout(name),
                                  file_problems(path, directory)))
        return cls(directory, hooks, ignored, dir_problems)

    def problems(self):
        """Every reason this set is refused, one line each."""
        lines = ["hooks directory: " + problem for problem in self.dir_problems]
        for hook in self.hooks:
            lines.extend("hook {}: {}".format(hook.name, problem) for problem in hook.problems)
        return lines

    def to_dict(self):
        return {"dir": self.directory, "hooks": [hook.to_dict() for hook in self.hooks],
                "ignored": list(self.ignored), "problems": self.problems()}

    def freeze(self, env, deadline, cancelled=None):
        """Run `freeze` in name order; returns the names that succeeded.

        On a failure, runs `abort` in reverse on the hooks that ran, the failing one
        included (it may hold half a lock), then raises HookError. `cancelled()`, when
        given, true once the session is abandoned: no further hook starts, and the
        running one is stopped as at its timeout.
        """
        refused = self.problems()
        if refused:
            raise HookError("refusing to run hooks from {} (nothing was run or frozen): {}"
                            .format(self.directory, "; ".join(refused)))
        ran = []
        for hook in self.hooks:
            if time.time() >= deadline:
                failure = "the session deadline passed before hook {} could run freeze".format(
                    hook.name)
            elif cancelled is not None and cancelled():
                failure = "the session was abandoned before hook {} could run freeze".format(
                    hook.name)
            else:
                result = self._run(hook, "freeze", env, deadline, cancelled)
                ran.append(hook.name)
                if result.ok:
                    continue
                failure = result.message
            problems = self.abort(ran, env)
            raise HookError(failure + "".join("; then " + problem for problem in problems))
        return ran

    def abort(self, ran, env):
        """Run `abort` in reverse on `ran`; returns problem lines, never raises."""
        return self._undo("abort", ran, env)

    def thaw(self, ran, env):
        """Run `thaw` in reverse on `ran`; returns problem lines, never raises."""
        return self._undo("thaw", ran, env)

    def run_all(self, action, env, deadline):
        """The admin's dry run (`xe-quiesce hooks --run`): no filesystem is frozen."""
        if action == "freeze":
            return self.freeze(env, deadline)
        return self._undo(action, [hook.name for hook in self.hooks], env)

    def _undo(self, action, ran, env):
        problems = []
        for name in reversed(list(ran)):
            try:
                hook = self._by_name.get(name)
                refused = self.dir_problems + (hook.problems if hook else [])
                if hook is None:
                    problems.append("hook {} ran freeze but is no longer in {}; its {} "
                                    "was not run".format(name, self.directory, action))
                elif refused:
                    problems.append("hook {}: {} refused: {}".format(
                        name, action, "; ".join(refused)))
                else:
                    result = self._run(hook, action, env)
                    if not result.ok:
                        problems.append(result.message)
            except Exception as error:  # one hook's trouble must not skip the others
                problems.append("hook {} {}: {}".format(name, action, error))
        return problems

    def _run(self, hook, action, env, deadline=None, cancelled=None):
        """Run one hook once, bounded by its timeout and `deadline` (epoch seconds)."""
        result = HookResult(hook, action)
        self.results.append(result)
        limit = hook.timeout
        expiry = "timed out after {:g} s".format(hook.timeout)
        if deadline is not None and deadline - time.time() < limit:
            limit = max(0.0, deadline - time.time())
            expiry = "reached the session deadline"
        started = time.monotonic()
        environment = dict(SAFE_ENVIRONMENT)
        environment.update((key, str(value)) for key, value in env.items())
        try:
            proc = subprocess.Popen(
                [hook.path, action], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=environment, cwd="/", close_fds=True,
                start_new_session=True)
        except OSError as error:
            result.message = "hook {} {}: cannot run {}: {}".format(
                hook.name, action, hook.path, error.strerror)
            LOG.error("%s", result.message)
            return result
        capture = _Capture(proc)
        try:
            stop = capture.until(lambda: proc.poll() is not None or bool(
                cancelled is not None and cancelled()), started + limit)
            if stop and proc.poll() is None:
                expiry = "stopped: the session was abandoned"
            if stop and proc.poll() is not None:
                capture.drain(DRAIN_GRACE)
                result.ok = proc.returncode == 0
                result.message = "hook {} {}: {}".format(hook.name, action, _status(proc))
            else:
                result.message = "hook {} {}: {}; {}".format(
                    hook.name, action, expiry, _kill_group(proc, capture))
        finally:
            capture.close()
        result.duration = time.monotonic() - started
        result.output = capture.text()
        _log(result)
        return result


def _status(proc):
    code = proc.returncode
    if code == 0:
        return "ok"
    if code < 0:
        return "killed by signal {}".format(-code)
    return "failed with exit status {}".format(code)


def _kill_group(proc, capture):
    """SIGKILL the hook's process group; wait a little, never forever."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if capture.until(lambda: proc.poll() is not None, time.monotonic() + KILL_GRACE):
        return "its process group was killed"
    return ("its process group was killed, but pid {} did not exit within {:g} s (blocked "
            "in the kernel, e.g. writing to a frozen filesystem); abandoned".format(
                proc.pid, KILL_GRACE))


def _log(result):
    level = logging.INFO if result.ok else logging.ERROR
    LOG.log(level, "%s (%.1f s)", result.message, result.duration)
    for stream in ("stdout", "stderr"):
        for line in result.output.get(stream, []):
            LOG.log(level if stream == "stderr" else logging.INFO, "hook %s %s %s: %s",
                    result.name, result.action, stream, line)
