"""Freeze the planned filesystems, hold them, thaw exactly what this session froze.

The window that applications feel runs from the first FIFREEZE to the last FITHAW, so
everything that can happen before it does: the fds are opened and checked, and each
filesystem is `syncfs`ed while applications still run (a freeze then has little left to
flush). Filesystems the plan does not order are frozen concurrently, one thread each;
those threads are started for the syncfs pass and then wait for the freeze, so no thread
is started inside the window and none twice per filesystem. They are started with
_thread.start_new_thread, not threading.Thread: its start() waits for each new thread to
run before the next is started, which cost 2.8 ms for 32 of them on a 2-core guest
(1.9 ms without); each worker says it ended by an Event instead of join().
While the FIFREEZE calls run, and only then, the kernel's RCU grace periods are
expedited (linux/rcu.py): most of a clean filesystem's FIFREEZE is waiting for them.
Thaw is in reverse plan order through the same fds, and only of what this session froze:
a filesystem someone else had frozen (tolerated EBUSY) stays theirs.
"""
import _thread
import errno
import logging
import threading
import time

from ..errors import FreezeError
from ..linux.fsops import FsOps
from ..linux.mountinfo import devno_of
from ..linux.rcu import ExpeditedRcu

log = logging.getLogger(__name__)

FROZEN = "frozen"
UNSUPPORTED = "unsupported"
TOLERATED = "busy-tolerated"
FAILED = "failed"
NOT_ATTEMPTED = "not-attempted"
THAWED = "thawed"


class FsState(object):
    """One planned filesystem through the session, with the timestamps benchmarks read."""

    def __init__(self, index, fs):
        self.index = index
        self.fs = fs
        self.mount_point = fs.mount_point
        self.fd = None
        self.status = NOT_ATTEMPTED
        self.error = None
        self.freeze_start = self.frozen_at = self.thaw_start = self.thawed_at = None


def _errname(error):
    return "{} ({})".format(errno.errorcode.get(error.errno, error.errno), error.strerror)


class Freezer(object):
    def __init__(self, plan, ops=None, sync_first=True, concurrent=True, on_ebusy="fail",
                 rcu=None):
        self.plan = plan
        self.ops = ops or FsOps()
        self.rcu = rcu or ExpeditedRcu(wanted=False)
        self.sync_first = sync_first
        self.concurrent = concurrent
        self.on_ebusy = on_ebusy
        self.states = [FsState(index, fs) for index, fs in enumerate(plan.filesystems)]
        self._running = []  # the workers' ended Events still unset at the deadline
        self._workers = []
        self._go = threading.Event()
        self._cancelled = False
        self._abort = threading.Event()
        self._done = {state.fs.devno: threading.Event() for state in self.states}
        self._guard = None

    @property
    def fds(self):
        return [state.fd for state in self.states]

    @property
    def mount_points(self):
        return [state.mount_point for state in self.states]

    def frozen(self):
        return [state for state in self.states if state.status == FROZEN]

    def open(self):
        """Open every mount point and prove each fd reaches the planned mount."""
        try:
            for state in self.states:
                state.fd = self.ops.open(state.mount_point)
                self._check_mount(state)
        except OSError as error:
            self.close()
            raise FreezeError("{}: cannot open: {}".format(state.mount_point, _errname(error)))
        except FreezeError:
            self.close()
            raise

    def _check_mount(self, state):
        mount_id = self.ops.mount_id(state.fd)
        if mount_id is not None:
            planned = {entry.mount_id for entry in state.fs.entries}
            ok = mount_id in planned
        else:
            ok = devno_of(*self.ops.device(state.fd)) == state.fs.devno
        if not ok:
            raise FreezeError("{}: no longer the planned {} filesystem (unmounted or "
                              "replaced since planning); nothing frozen".format(
                                  state.mount_point, state.fs.fstype))

    def sync(self):
        """Flush every filesystem before the window opens, each in the thread that will
        freeze it (started here, waiting for freeze()); sequentially when not concurrent."""
        if not self.concurrent or len(self.states) < 2:
            if self.sync_first:
                for state in self.states:
                    self._sync_one(state)
            return
        synced = [threading.Event() for _ in self.states]
        self._workers = [threading.Event() for _ in self.states]  # set as each one ends
        for state, event, ended in zip(self.states, synced, self._workers):
            _thread.start_new_thread(self._work, (state, event, ended))
        for event in synced:
            event.wait()

    def _work(self, state, synced, ended):
        try:
            try:
                if self.sync_first:
                    self._sync_one(state)
            finally:
                synced.set()
            self._go.wait()
            if not self._cancelled:
                self._freeze_one(state)
        finally:
            ended.set()

    def _sync_one(self, state):
        try:
            self.ops.syncfs(state.fd)
        except OSError as error:
            log.warning("%s: syncfs failed (%s); the freeze will flush it", state.mount_point,
                        _errname(error))

    def freeze(self, guard, deadline):
        """Freeze all; on any failure thaw what was frozen and raise FreezeError.

        `guard` is told about each fd before its FIFREEZE, so a freeze that completes
        after this process died is still undone; `deadline` is epoch seconds. Concurrent
        freezes run in the threads sync() started.
        """
        self._guard = guard
        if self.rcu.ours:
            guard.expediting(True)  # first: if we die holding the knob, the guard restores it
            self.rcu.engage()
        try:
            self._freeze_all(deadline)
        finally:
            if self.rcu.ours:
                self.rcu.release()
                guard.expediting(False)
        stuck = [state for state in self.states if state.status == NOT_ATTEMPTED
                 and state.freeze_start is not None]
        failed = [state for state in self.states if state.status == FAILED] + stuck
        for state in stuck:
            state.error = "FIFREEZE did not return before the deadline"
        if failed:
            self.thaw()
            raise FreezeError("; ".join("{}: freeze failed: {}".format(
                state.mount_point, state.error) for state in failed) +
                "; everything this session froze is thawed again")
        for state in self.states:
            if state.status == UNSUPPORTED:
                log.info("%s: %s does not support freezing; skipped", state.mount_point,
                         state.fs.fstype)
            elif state.status == TOLERATED:
                log.warning("%s was already frozen by someone else; left to them "
                            "(on-ebusy = tolerate)", state.mount_point)
        return self.frozen()

    def _freeze_all(self, deadline):
        """Every FIFREEZE, here or in the sync pass's threads; returns when all returned or
        the deadline passed."""
        if not self._workers:
            for state in self.states:
                self._freeze_one(state)
            return
        self._go.set()
        for ended in self._workers:
            ended.wait(max(0.0, deadline - time.time()))
        self._running = [ended for ended in self._workers if not ended.is_set()]
        if self._running:  # the deadline: those still waiting their turn must not go on
            self._abort.set()

    def _freeze_one(self, state):
        for devno in self.plan.prerequisites[state.fs.devno]:
            self._done[devno].wait()
        try:
            if self._abort.is_set():
                return
            self._guard.announce(state.index)
            state.freeze_start = time.monotonic()
            try:
                self.ops.freeze(state.fd)
            except OSError as error:
                self._guard.retract(state.index)
                self._classify_failure(state, error)
            else:
                state.frozen_at = time.monotonic()
                state.status = FROZEN
        except FreezeError as error:
            state.status, state.error = FAILED, str(error)
            self._abort.set()
        finally:
            self._done[state.fs.devno].set()

    def _classify_failure(self, state, error):
        if error.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
            state.status = UNSUPPORTED
        elif error.errno == errno.EBUSY and self.on_ebusy == "tolerate":
            state.status = TOLERATED
        else:
            state.status, state.error = FAILED, _errname(error)
            if error.errno == errno.EBUSY:
                state.error += (": already frozen by someone else (set [freeze] on-ebusy = "
                                "tolerate to go on)")
            self._abort.set()

    def stuck(self):
        """Threads still inside a FIFREEZE: the guard must not be released yet."""
        self._running = [ended for ended in self._running if not ended.is_set()]
        return bool(self._running)

    def thaw(self):
        """Thaw in reverse plan order; returns the problems (thaw never raises)."""
        problems = []
        for state in reversed(self.states):
            if state.status != FROZEN:
                continue
            state.thaw_start = time.monotonic()
            try:
                was_frozen = self.ops.thaw(state.fd)
            except OSError as error:
                state.error = _errname(error)
                problems.append("{}: thaw failed: {}".format(state.mount_point, state.error))
                continue
            state.thawed_at = time.monotonic()
            state.status = THAWED
            if not was_frozen:
                state.error = "already thawed (by the deadline guard?)"
        return problems

    def close(self):
        if not self._go.is_set():  # sync() ran, freeze() did not: let the threads end
            self._cancelled = True
            self._go.set()
        for state in self.states:
            if state.fd is not None:
                self.ops.close(state.fd)
                state.fd = None


def thaw_recorded(mounts, ops):
    """Thaw, in reverse, mounts a dead session recorded (journal entries with
    mount_point and mount_ids); returns (thawed, {mount_point: error}).

    The fds died with the session, so each mount point is reopened, and thawed only if
    it still reaches a recorded mount: a path that now leads elsewhere is left alone.
    """
    thawed, errors = [], {}
    for mount in reversed(mounts):
        point = mount["mount_point"]
        try:
            fd = ops.open(point)
        except OSError as error:
            errors[point] = "cannot open: {}".format(error.strerror)
            continue
        try:
            if ops.mount_id(fd) in mount.get("mount_ids", []) and ops.thaw(fd):
                thawed.append(point)
        except OSError as error:
            errors[point] = errno.errorcode.get(error.errno, str(error.errno))
        finally:
            ops.close(fd)
    return thawed, errors
