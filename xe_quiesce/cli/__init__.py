"""The `xe-quiesce` command line."""
