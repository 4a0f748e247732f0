"""`python -m xe_quiesce.cli`, as the tests and the e2e bed run the command."""
from .main import main

main()
