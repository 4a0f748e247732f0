"""systemd's notify protocol (READY=1, WATCHDOG=1) over $NOTIFY_SOCKET, without libsystemd.

A datagram to a unix socket (abstract when the name starts with '@'); no file is
written, so it is safe while filesystems are frozen. Outside systemd it does nothing.
"""
import os
import socket
import threading
import time


def notify(message):
    """Send one notification; returns False when not under systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.sendto(message.encode("ascii"), address)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def watchdog_interval():
    """Half of $WATCHDOG_USEC in seconds, or None when no watchdog is asked for us."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


class Watchdog(object):
    """Pings WATCHDOG=1 every `interval` s while the main loop keeps beating.

    A thread, because the main loop legitimately blocks for a whole freeze (hooks
    included); `beat(grace)` says how long the main loop may be silent before the
    pings stop and systemd restarts a hung daemon.
    """

    def __init__(self, interval):
        self.interval = interval
        self._alive_until = time.monotonic() + interval
        self._stop = threading.Event()
        self._thread = None

    def beat(self, grace=None):
        self._alive_until = time.monotonic() + (grace if grace is not None else 2 * self.interval)

    def start(self):
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self):
        while True:
            if time.monotonic() < self._alive_until:
                notify("WATCHDOG=1")
            if self._stop.wait(self.interval):
                return
