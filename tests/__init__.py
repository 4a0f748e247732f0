"""The tests, in folders that mirror the package (linux/, core/, triggers/, cli/, host/)."""
import os

# The source tree's top, for tests that run its files (wherever their module sits).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
