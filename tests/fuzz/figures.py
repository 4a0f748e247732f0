"""What the fault suite reached (kills, requests answered, worst thaw delay...), kept
by the tests and printed at the end of the run by tests/fuzz/conftest.py; and the one
random seed of the run (XE_QUIESCE_FUZZ_SEED replays it)."""
import collections
import os
import time

SEED = int(os.environ.get("XE_QUIESCE_FUZZ_SEED") or int(time.time()))
FIGURES = collections.OrderedDict([("random seed (XE_QUIESCE_FUZZ_SEED)", SEED)])


def count(name, by=1):
    FIGURES[name] = FIGURES.get(name, 0) + by


def worst(name, value):
    """Keep the largest value seen under `name`."""
    if value is not None and (name not in FIGURES or value > FIGURES[name]):
        FIGURES[name] = value


def lines():
    return ["{}: {}".format(name, "{:.3f}".format(value) if isinstance(value, float)
                            else value) for name, value in FIGURES.items()]
