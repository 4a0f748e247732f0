"""The OpenRC service script run by OpenRC itself (Debian 13's openrc 0.56), not only `sh -n`.

The script is installed as `make install INIT_SCRIPT=openrc` installs it. OpenRC is not
the chroot's init, so the test marks it booted (/run/openrc/softlevel), as containers
do; Debian's openrc has no `localmount` service (Alpine's and Gentoo's have), so a
no-op one stands in. As in the sysvinit test, there is no xenstore here: a stand-in for
`xe-quiesce run` that stays up is what supervise-daemon supervises.
"""
import os
import shutil

import pytest

from . import chroots
from .conftest import REPO

STAND_IN = "#!/bin/sh\nwhile :; do sleep 1; done\n"
LOCALMOUNT = "#!/sbin/openrc-run\ndescription=\"stand-in for Alpine's localmount\"\n"
BOOTED = "mkdir -p /run/openrc && touch /run/openrc/softlevel\n"
# Every OpenRC call gets a bound: a hang fails the test with what was printed so far.
RC = "timeout -s KILL 60 /etc/init.d/xe-quiesce"
# The processes whose command line is the daemon's (supervise-daemon's own names it too).
DAEMONS = ("for p in /proc/[0-9]*; do tr '\\000' ' ' <$p/cmdline 2>/dev/null; echo; done"
           " | grep -c '^/bin/sh /usr/bin/xe-quiesce run' || :")


@pytest.fixture(scope="module")
def root():
    with chroots.unpacked("trixie") as path:
        chroots.run_in(path, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                       "openrc")
        for name, text, mode in [("etc/init.d/localmount", LOCALMOUNT, 0o755),
                                 ("usr/bin/xe-quiesce", STAND_IN, 0o755)]:
            with open(os.path.join(path, name), "w") as fh:
                fh.write(text)
            os.chmod(os.path.join(path, name), mode)
        shutil.copy(os.path.join(REPO, "init/openrc/xe-quiesce"),
                    os.path.join(path, "etc/init.d/xe-quiesce"))
        yield path


def guest(root, xen=True, xenbus=True):
    """Make the root look like a Xen guest, with or without the xenbus device."""
    for sub in ("sys/hypervisor", "dev/xen"):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
    if xen:
        os.makedirs(os.path.join(root, "sys/hypervisor"))
        with open(os.path.join(root, "sys/hypervisor/type"), "w") as fh:
            fh.write("xen\n")
    if xenbus:
        os.makedirs(os.path.join(root, "dev/xen"))
        open(os.path.join(root, "dev/xen/xenbus"), "w").close()


LIFECYCLE = BOOTED + """
s="%(rc)s"
$s start
$s status
echo "daemons: $(%(daemons)s)"
pid=$(cat /run/xe-quiesce/supervise-xe-quiesce.pid)
tr '\\000' ' ' </proc/$pid/cmdline | grep -q '^supervise-daemon xe-quiesce ' && echo supervised
$s stop
rc=0; $s status || rc=$?
echo "status after stop: $rc"
echo "daemons: $(%(daemons)s)"
""" % {"daemons": DAEMONS, "rc": RC}


def test_start_status_stop_under_supervise_daemon(root):
    guest(root)
    out = chroots.run_in(root, "sh", "-ec", LIFECYCLE).stdout
    assert " * Starting xe-quiesce ... [ ok ]" in out, out
    assert " * status: started\ndaemons: 1\nsupervised\n" in out, out
    assert " * Stopping xe-quiesce ... [ ok ]" in out, out
    assert out.endswith(" * status: stopped\nstatus after stop: 3\ndaemons: 0\n"), out


NOT_STARTED = BOOTED + """
rc=0; %(rc)s start || rc=$?
echo "start: $rc"
echo "daemons: $(%(daemons)s)"
""" % {"daemons": DAEMONS, "rc": RC}


def test_xen_guest_without_xenbus_is_one_error_and_no_daemon(root):
    guest(root, xenbus=False)
    out = chroots.run_in(root, "sh", "-ec", NOT_STARTED).stdout
    # Our one line (eerror), then OpenRC's own verdict on the start.
    assert out == (" * xe-quiesce: no xenbus device (/dev/xen/xenbus, /proc/xen/xenbus): "
                   "not starting\n * ERROR: xe-quiesce failed to start\n"
                   "start: 1\ndaemons: 0\n"), out


def test_not_a_xen_guest_does_not_start(root):
    guest(root, xen=False, xenbus=False)
    out = chroots.run_in(root, "sh", "-ec", NOT_STARTED).stdout
    assert out == (" * xe-quiesce: not running in a Xen guest\n"
                   " * ERROR: xe-quiesce failed to start\nstart: 1\ndaemons: 0\n"), out
