"""Waiting on a xenstore key with a watch and a deadline, as xapi's ezxenstore does.

A watch event is only a hint (xenstored fires once at registration, and events can be
coalesced), so the key is re-read after every event and the predicate decides.
"""
import itertools
import time

_tokens = itertools.count(1)


def wait_for(client, path, predicate, timeout, stop=None):
    """Return the first value of `path` (None = absent) for which `predicate` holds.

    Returns `NotFinished` after `timeout` seconds, or as soon as `stop()` is true.
    """
    token = "wait{}".format(next(_tokens))
    deadline = time.monotonic() + timeout
    client.watch(path, token)
    try:
        while True:
            value = client.read_or(path)
            if predicate(value):
                return value
            left = deadline - time.monotonic()
            if left <= 0 or (stop is not None and stop()):
                return NotFinished
            client.wait_event(min(left, 0.5))
    finally:
        client.unwatch(path, token)


class _NotFinished(object):
    def __repr__(self):
        return "NotFinished"


NotFinished = _NotFinished()
