"""Linux effects: ioctls, the mount table, the block stack, sd_notify, processes.

This layer imports nothing else of the package (tests/test_layers.py keeps it so).
"""
