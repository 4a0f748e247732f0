"""Packaging tests (issue 6): built .deb in Debian chroots, built .rpm metadata, lints."""
