"""The `xe-quiesce` entry point (`python -m xe_quiesce.cli`, the console script)."""
from .cli_commands import cli, main  # noqa: F401  (cli: the click group, for tests)

if __name__ == "__main__":
    main()
