"""The bed's own observer of one quiesce request: when each key appeared, changed or went.

It watches (pyxs over the dom0 socket, independent of both the agent and the product's host
roles) and reads each key as its event arrives, so the timings it reports (acknowledgement,
freeze, status) are not taken from the code under test.  A watch, not polling: the agent
deletes C/action within milliseconds, faster than any poll would see it.
"""

import threading
import time

import pyxs
import xscli

STOP_KEY = "/local/domain/0/e2e-spy"


class Spy(threading.Thread):
    def __init__(self, home, vss):
        threading.Thread.__init__(self, daemon=True)
        self.keys = {home + "/control/snapshot/action": "action",
                     home + "/control/snapshot/status": "status",
                     vss + "/status": "vss-status"}
        self.watched = [home + "/control/snapshot", vss, STOP_KEY]
        self.events = []            # (monotonic time, key, value or None)
        self.ready = threading.Event()
        self.stopping = False

    def run(self):
        with pyxs.Client(unix_socket_path=xscli.SOCKET) as client:
            monitor = client.monitor()
            for i, path in enumerate(self.watched):
                monitor.watch(path.encode(), b"spy%d" % i)
            self.ready.set()
            for event in monitor.wait():
                if self.stopping:
                    break
                key = self.keys.get(event.path.decode())
                if key is not None:
                    self.events.append((time.monotonic(), key, xscli.read(event.path.decode())))

    def start(self):
        threading.Thread.start(self)
        self.ready.wait(10)

    def stop(self):
        self.stopping = True
        xscli.write(STOP_KEY, str(time.monotonic()))  # wakes the monitor
        self.join(5)

    def first(self, key, value):
        """When the key first read value (None: gone, after an earlier event), or None."""
        earlier = False
        for when, name, current in self.events:
            if name == key:
                if current == value and (value is not None or earlier):
                    return when
                earlier = True
        return None

    def last_before(self, key, value, limit):
        """When the key last read value before time limit, or None."""
        times = [when for when, name, current in self.events
                 if name == key and current == value and when <= limit]
        return times[-1] if times else None

    def _action_times(self):
        """C/action's events: its creation, then its deletion (the watched parents' own
        registration events are not among the keys). Values are not trusted: the agent may
        delete the key before the creation event is even read."""
        return [when for when, name, _ in self.events if name == "action"]

    def requested(self):
        """When XAPI wrote C/action, or None."""
        times = self._action_times()
        return times[0] if times else None

    def acknowledged(self):
        """Seconds from C/action's creation to its deletion, or None if never deleted."""
        times = self._action_times()
        return times[1] - times[0] if len(times) >= 2 else None
