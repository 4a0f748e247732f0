"""What the fault suite reached (kills, requests answered, worst thaw delay...), kept
by the tests and printed at the end of the run by tests/fuzz/conftest.py."""
import collections

FIGURES = collections.OrderedDict()


def count(name, by=1):
    FIGURES[name] = FIGURES.get(name, 0) + by


def worst(name, value):
    """Keep the largest value seen under `name`."""
    if value is not None and (name not in FIGURES or value > FIGURES[name]):
        FIGURES[name] = value


def lines():
    return ["{}: {}".format(name, "{:.3f}".format(value) if isinstance(value, float)
                            else value) for name, value in FIGURES.items()]
