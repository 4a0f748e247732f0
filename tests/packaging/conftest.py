"""Packaging tests run only from `make test-packaging` / `make lint-packaging`.

They need the packages that those targets build first (XEQ_PACKAGES names the folder),
root, and cached debootstrap chroots; the plain unit runs (`make unit`, twice, once per
venv) must not pick them up, so without XEQ_PACKAGING_TESTS=1 nothing here is collected.
"""
import glob
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PKG_NAME = "xe-guest-utilities-quiesce"

if os.environ.get("XEQ_PACKAGING_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]


def package_version():
    out = subprocess.run(["/usr/bin/python3", "setup.py", "--version"], cwd=REPO, check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         universal_newlines=True).stdout
    return out.strip().splitlines()[-1]


def _built(pattern):
    folder = os.environ.get("XEQ_PACKAGES", os.path.join(REPO, "build", "packages"))
    found = sorted(glob.glob(os.path.join(folder, pattern)))
    if not found:
        pytest.fail("no %s in %s: run `make deb rpm` (make test-packaging does)" % (
            pattern, folder))
    return found


@pytest.fixture(scope="session")
def version():
    return package_version()


@pytest.fixture(scope="session")
def deb(version):
    return _built("%s_%s_all.deb" % (PKG_NAME, version))[0]


def target_rpm(version, dist):
    """The package built for one target (dist tag el8, el9, el10, fc42, ...)."""
    return _built("%s-%s-1.%s.noarch.rpm" % (PKG_NAME, version, dist))[0]


@pytest.fixture(scope="session")
def rpm_systemd(version):
    """The EL 9 package stands for the systemd packages in the checks they share."""
    return target_rpm(version, "el9")


@pytest.fixture(scope="session")
def srpm(version):
    return _built("%s-%s-1.src.rpm" % (PKG_NAME, version))[0]


@pytest.fixture(scope="session")
def rpm_sysv(version):
    return _built("%s-%s-1.sysv.noarch.rpm" % (PKG_NAME, version))[0]


@pytest.fixture(scope="session")
def changes(version):
    return _built("%s_%s_*.changes" % (PKG_NAME, version))[0]


@pytest.fixture(scope="session")
def dsc(version):
    return _built("%s_%s.dsc" % (PKG_NAME, version))[0]
