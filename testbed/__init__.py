"""The testbed: the real components that the tests, the demo and the bench run against.

Loop filesystems with real FIFREEZE (loopfs), a real C or OCaml xenstored (xenstored),
dom0 played with the product's own host roles (dom0sim, domains) and the guest daemon
as its own process (guestd); see docs/design.md. It imports only the product
(xe_quiesce), never tests/ nor bench/ (tests/test_layers.py), so that bench/ can use it
without depending on the tests.
"""
