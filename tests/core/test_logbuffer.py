"""The log gate: nothing reaches the real handler while held; order kept; bounded."""
import logging

from xe_quiesce.core.logbuffer import LogGate


class Collect(logging.Handler):
    def __init__(self):
        logging.Handler.__init__(self)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def make(capacity=3):
    target = Collect()
    gate = LogGate(target, capacity=capacity)
    logger = logging.getLogger("test-gate-{}".format(id(gate)))
    logger.propagate = False
    logger.addHandler(gate)
    return gate, logger, target


def test_held_records_wait_and_flush_in_order():
    gate, logger, target = make()
    logger.warning("before")
    gate.hold()
    logger.warning("one")
    logger.warning("two")
    assert target.messages == ["before"]
    gate.resume()
    assert target.messages == ["before", "one", "two"]


def test_buffer_is_bounded_and_says_what_it_dropped():
    gate, logger, target = make(capacity=2)
    gate.hold()
    for n in range(5):
        logger.warning("m%d", n)
    gate.resume()
    assert target.messages == ["3 log records were dropped while frozen", "m3", "m4"]
