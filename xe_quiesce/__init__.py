"""xe-guest-utilities-quiesce: application-consistent snapshots for Xen guests.

Bytecode writing is switched off as the package is first imported: a `.pyc` written
while a filesystem is frozen would block this process with the guest frozen.
"""
import sys

sys.dont_write_bytecode = True

__version__ = "0.1.0"
