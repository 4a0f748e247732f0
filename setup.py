"""Kept for old setuptools and for dh-python/pybuild; metadata lives in setup.cfg."""
from setuptools import setup

setup()
