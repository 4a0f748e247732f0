"""One quiesce session: what to freeze, hooks, freeze, the deadline guard, journal, thaw.

Imports only `linux` and the shared modules; it knows nothing of xenstore or HTTP.
"""
