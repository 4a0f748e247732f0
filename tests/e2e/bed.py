"""`make e2e`: boot Xen + dom0 + domU under QEMU (TCG) and report one line per scenario.

    PASS|FAIL|SKIP <scenario>[<xenstored>/<guest>]: <detail>

Each boot in BOOTS is one QEMU run; dom0's /init runs several scenarios per domU and prints
`E2E-RESULT` lines on the serial console, which QEMU writes to a file that this script follows.
A failed boot keeps that serial log (Xen, dom0 and, through xenconsoled --log=guest, the domU)
under artifacts/e2e/ and prints its path.  Exit status: 1 if any scenario failed.

What the domU runs as the agent is decided here: the built .deb from build/packages/ when there
is one (installed with dpkg and started by its init script), else the source tree when it has a
`run` command (`python3 -m xe_quiesce.cli run`), else nothing, and the agent scenarios SKIP.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import images  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "xe_quiesce"   # --src replaces it (another checkout's package)
HERE = REPO / "tests" / "e2e"
ARTIFACTS = REPO / "artifacts" / "e2e"
RUN = images.CACHE / "run"

# name: (xenstored, plan, time limit in seconds).  A plan is "guest:scenario+scenario/...",
# one domU per guest type, its scenarios in order ("+" and "/" because QEMU's -initrd
# reserves "," for its module list).
# PVH (nested paging emulated by QEMU) is several times slower than PV: it runs the
# conversation once; the failure paths run on PV, and C xenstored gets the main path.
BOOTS = {
    "oxenstored": ("oxenstored", "pv:smoke+success+no-answer+sigkill/pvh:success", 1200),
    "cxenstored": ("cxenstored", "pv:success+relay", 600),
}
# Under emulation every mitigation and self-test costs seconds; this is a test bed.
FAST_LINUX = "mitigations=off cryptomgr.notests random.trust_cpu=on"
SHARED = ("xscli.py", "shell.py")  # the bed's modules both dom0 and the domU import
RESULT = re.compile(r"E2E-RESULT (PASS|FAIL|SKIP) (\S+): (.*)")
# dom0 says "up" about 20 s after QEMU starts. Under TCG its kernel now and then hangs early
# in boot (seen: right after Xen's "PCI add device" lines), before any code of ours runs:
# such a boot is started once more, and the hung boot's serial log is kept.
DOM0_UP = "e2e-dom0: up after"
DOM0_UP_LIMIT = 150
BOOT_ATTEMPTS = 2


def log(msg):
    print("e2e: " + msg, flush=True)


def cpio(root, target):
    """Append a newc archive of root to target: the kernel unpacks concatenated archives."""
    names = subprocess.run(["find", ".", "-print0"], cwd=str(root), check=True,
                           stdout=subprocess.PIPE).stdout
    with open(str(target), "ab") as fh:
        subprocess.run(["cpio", "--null", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
                       cwd=str(root), input=names, stdout=fh, check=True)


def copy_tree(src, dst):
    shutil.copytree(str(src), str(dst), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def agent_mode(wanted, deb=None):
    """("deb", path) / ("src", None) / ("none", reason), for --agent auto|deb|src|none."""
    debs = [str(deb)] if deb else sorted(
        glob.glob(str(REPO / "build/packages/xe-guest-utilities-quiesce_*_all.deb")),
        key=os.path.getmtime)
    if wanted in ("auto", "deb") and debs:
        return "deb", debs[-1]
    python = REPO / ".venv/bin/python"
    if wanted in ("auto", "src") and (SRC / "cli.py").exists() and python.exists():
        probe = subprocess.run([str(python), "-m", "xe_quiesce.cli", "run", "--help"],
                               cwd=str(SRC.parent), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        if probe.returncode == 0:
            return "src", None
    return "none", "no built .deb and no `xe-quiesce run` in the source tree"


def run_quiet(cmd, what, **kw):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, **kw)
    if proc.returncode:
        raise SystemExit("e2e: %s failed:\n%s" % (what, proc.stdout[-3000:]))


def domu_root(imgs, mode, deb):
    """RUN/domu-root.img: the cached domU root plus this run's files, as a read-only ext4 disk.

    This run's changes go to an overlayfs upper layer over the cached root: `dpkg -i` of the
    built package (as an admin would install it) and the guest scripts (the agent's max-frozen
    is written in the domU before it starts: dom0 picks it per guest type).
    mke2fs -d then writes the merged tree into the image, which QEMU gives dom0 as a disk and
    dom0 hands to every domU as xvda."""
    layer = RUN / "domu-layer"
    upper, work, merged = layer / "upper", layer / "work", layer / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,"
                    "workdir=%s" % (imgs.domu / "root", upper, work), str(merged)], check=True)
    try:
        if mode == "deb":
            policy = merged / "usr/sbin/policy-rc.d"  # install, but start nothing here
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            shutil.copy(deb, str(merged / "tmp/agent.deb"))
            run_quiet(["chroot", str(merged), "dpkg", "-i", "/tmp/agent.deb"],
                      "dpkg -i of the .deb in the domU image",
                      env=dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin"))
            policy.unlink()
            (merged / "tmp/agent.deb").unlink()
        (merged / "e2e").mkdir()
        if mode == "src":
            copy_tree(SRC, merged / "e2e/src/xe_quiesce")
        shutil.copy(str(HERE / "guest/init"), str(merged / "init"))
        for module in SHARED:
            shutil.copy(str(HERE / module), str(merged / "e2e"))
        copy_tree(HERE / "guest", merged / "e2e/guest")
        image = RUN / "domu-root.img"
        run_quiet(["mke2fs", "-q", "-t", "ext4", "-O", "^has_journal", "-L", "e2e-domu-root",
                   "-d", str(merged), str(image), "1G"], "mke2fs of the domU root")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
        shutil.rmtree(str(layer))
    return image


def assemble(imgs, mode, deb):
    """RUN/dom0.cpio (dom0's cached base + this run's scripts) and RUN/domu-root.img."""
    if RUN.exists():
        shutil.rmtree(str(RUN))
    RUN.mkdir(parents=True)
    disk = domu_root(imgs, mode, deb)
    dom0 = RUN / "dom0-overlay"
    (dom0 / "e2e").mkdir(parents=True)
    (dom0 / "boot").mkdir()
    shutil.copy(str(HERE / "dom0/init"), str(dom0 / "init"))
    for module in SHARED:
        shutil.copy(str(HERE / module), str(dom0 / "e2e"))
    copy_tree(HERE / "dom0", dom0 / "e2e/dom0")
    copy_tree(HERE / "guest", dom0 / "e2e/guest")
    if SRC.exists():
        copy_tree(SRC, dom0 / "e2e/src/xe_quiesce")
    relay_parts(dom0)
    shutil.copy(str(imgs.vmlinuz), str(dom0 / "boot/vmlinuz"))
    shutil.copy(str(imgs.domu_boot), str(dom0 / "e2e/domu-boot.cpio"))
    target = RUN / "dom0.cpio"
    shutil.copy(str(imgs.dom0 / "base.cpio"), str(target))
    cpio(dom0, target)
    shutil.rmtree(str(dom0))
    return target, disk


def relay_parts(dom0):
    """What the relay scenario needs in dom0 beside the tree: XO's client (this machine's
    node, a standalone binary, and the pinned package of tests/xo), XenAPI, the tests'
    XAPI stand-in, a certificate (dom0 has no openssl). Missing parts: it SKIPs."""
    sys.path.insert(0, str(REPO))
    from tests.xo import client
    node = shutil.which("node")
    xenapi = sorted(REPO.glob(".venv/lib/python3*/site-packages/XenAPI"))
    if not node or not client.installed() or not xenapi:
        log("relay scenario: no node, XO package or XenAPI here; it will SKIP")
        return
    (dom0 / "usr/bin").mkdir(parents=True, exist_ok=True)
    shutil.copy(node, str(dom0 / "usr/bin/node"))
    (dom0 / "e2e/xo").mkdir(parents=True)
    for name in ("client.py", "driver.mjs", "package-lock.json"):
        shutil.copy(str(REPO / "tests/xo" / name), str(dom0 / "e2e/xo"))
    shutil.copytree(client.modules_dir(), str(dom0 / client.modules_dir().lstrip("/")),
                    symlinks=True)
    copy_tree(xenapi[-1], dom0 / "e2e/src/XenAPI")
    shutil.copy(str(REPO / "tests/xapi_server.py"), str(dom0 / "e2e"))
    tls = dom0 / "e2e/relay-tls"
    tls.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=e2e-dom0", "-keyout", str(tls / "key.pem"),
                    "-out", str(tls / "cert.pem")], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def qemu_command(imgs, initrd, disk, serial, xenstored, plan, mode):
    params = "E2E_XENSTORED=%s E2E_PLAN=%s E2E_AGENT=%s" % (xenstored, plan, mode)
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "qemu64,+svm,+npt,+rdrand",
        "-m", "4096", "-smp", "2", "-display", "none", "-monitor", "none", "-nic", "none",
        "-serial", "file:%s" % serial, "-no-reboot",
        "-drive", "file=%s,if=virtio,format=raw,readonly=on" % disk,
        "-kernel", str(imgs.xen),
        "-append", "console=com1 com1=115200,8n1 dom0_mem=2048M,max:2048M loglvl=all "
                   "guest_loglvl=all console_timestamps=boot bootscrub=0 "
                   "spec-ctrl=no xpti=no",
        "-initrd", "%s console=hvc0 earlyprintk=xen rdinit=/init loglevel=4 %s %s,%s" % (
            imgs.vmlinuz, FAST_LINUX, params, initrd),
    ]


def parse_plan(plan):
    """[(guest, [scenario, ...]), ...] from "pv:smoke+success/pvh:smoke"."""
    return [(guest, scenarios.split("+")) for guest, _, scenarios in
            (item.partition(":") for item in plan.split("/"))]


def expected(xenstored, plan):
    return ["%s[%s/%s]" % (s, xenstored, guest) for guest, scenarios in parse_plan(plan)
            for s in scenarios + ["lvm"]]


def keep(serial, name=None):
    """Copy a serial log to artifacts/e2e/ and say where it is."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / (name or serial.name)
    shutil.copy(str(serial), str(kept))
    return kept


def fail(results, scenario, detail):
    results.append(("FAIL", scenario, detail))
    print("FAIL %s: %s" % (scenario, detail), flush=True)


def boot(name, imgs, initrd, disk, mode):
    """One QEMU run, started again if dom0 hangs in its early boot.

    [(verdict, scenario, detail)] and the serial log's path."""
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        results, serial, hung = boot_once(name, imgs, initrd, disk, mode)
        if not hung:
            return results, serial
        kept = keep(serial, "serial-%s-hung-%d.log" % (name, attempt))
        log("boot %s: dom0 not up within %d s (an emulated boot hang, before any test code "
            "ran; serial log kept at %s)%s" % (name, DOM0_UP_LIMIT, kept,
                                               "; starting it again" if attempt < BOOT_ATTEMPTS
                                               else ""))
    fail(results, "boot[%s]" % name, "dom0 never came up in %d boots" % BOOT_ATTEMPTS)
    return results + missing_results(name, results), serial


def missing_results(name, results):
    xenstored, plan, _ = BOOTS[name]
    names = {r[1] for r in results}
    missing = []
    for scenario in expected(xenstored, plan):
        if scenario not in names:
            fail(missing, scenario, "no result (see the serial log)")
    return missing


def boot_once(name, imgs, initrd, disk, mode):
    """One QEMU run: its results, the serial log's path, and whether dom0 hung in boot."""
    xenstored, plan, limit = BOOTS[name]
    serial = RUN / ("serial-%s.log" % name)
    if serial.exists():
        serial.unlink()
    cmd = qemu_command(imgs, initrd, disk, serial, xenstored, plan, mode)
    started = time.monotonic()
    # QEMU's own messages go to a file: a pipe nobody reads during the run could fill
    # and stop QEMU, which would look like a hung guest.
    stderr = RUN / ("qemu-%s.log" % name)
    with open(str(stderr), "wb") as handle:
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=handle)
    results, seen, done, up = [], 0, False, False
    try:
        while True:
            finished = qemu.poll() is not None
            text = serial.read_text(errors="replace") if serial.exists() else ""
            for line in text[seen:].splitlines(keepends=True):
                if not line.endswith("\n") and not finished:
                    break
                seen += len(line)
                found = RESULT.search(line)
                if found:
                    results.append(found.groups())
                    print("%s %s: %s" % found.groups(), flush=True)
                done = done or "E2E-DONE" in line
                up = up or DOM0_UP in line
            if finished:
                break
            if not up and time.monotonic() - started > DOM0_UP_LIMIT:
                return results, serial, True
            if time.monotonic() - started > limit:
                fail(results, "boot[%s]" % name, "no end within %d s" % limit)
                break
            time.sleep(0.5)
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu.wait()
    if not done and not any(r[1].startswith("boot[") for r in results):
        fail(results, "boot[%s]" % name, "QEMU ended (rc %s) before dom0 finished: %s"
             % (qemu.returncode, stderr.read_text(errors="replace")[-300:]))
    results += missing_results(name, results)
    log("boot %s: %.0f s" % (name, time.monotonic() - started))
    return results, serial, False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boot", action="append", choices=sorted(BOOTS),
                        help="run only this boot (repeatable); default: all")
    parser.add_argument("--plan", help="replace every boot's plan, e.g. pv:smoke+success")
    parser.add_argument("--agent", choices=("auto", "deb", "src", "none"), default="auto",
                        help="the agent in the domU: the built .deb, the source tree, none")
    parser.add_argument("--src", type=Path, help="the xe_quiesce package to use (default: "
                        "this checkout's) for the domU in src mode and dom0's host role")
    parser.add_argument("--deb", type=Path, help="the package to install in the domU "
                        "(default: the newest in build/packages/)")
    parser.add_argument("--strict", action="store_true", help="a SKIP fails the run too "
                        "(make test: CI must not pass on scenarios that did not run)")
    args = parser.parse_args()
    global SRC
    SRC = (args.src or SRC).resolve()
    for name, (xenstored, plan, limit) in list(BOOTS.items()):
        BOOTS[name] = (xenstored, args.plan or plan, limit)
    started = time.monotonic()
    imgs = images.build()
    mode, extra = agent_mode(args.agent, args.deb)
    log("agent in the domU: %s%s" % (mode, " (%s)" % extra if extra else ""))
    if not (SRC / "host").exists():
        log("no xe_quiesce/host: the agent scenarios will SKIP (dom0 plays the host with it)")
    initrd, disk = assemble(imgs, mode, extra if mode == "deb" else None)
    log("images ready after %.0f s" % (time.monotonic() - started))
    failed = passed = skipped = 0
    for name in args.boot or sorted(BOOTS, reverse=True):
        results, serial = boot(name, imgs, initrd, disk, mode)
        verdicts = [r[0] for r in results]
        failed += verdicts.count("FAIL")
        passed += verdicts.count("PASS")
        skipped += verdicts.count("SKIP")
        if "FAIL" in verdicts:
            log("boot %s failed: serial log (Xen + dom0 + domU) kept at %s"
                % (name, keep(serial)))
    log("total %.0f s" % (time.monotonic() - started))
    print("e2e: %d passed, %d failed, %d skipped" % (passed, failed, skipped), flush=True)
    if args.strict and skipped:
        log("--strict: %d scenario(s) skipped count as a failure" % skipped)
    return 1 if failed or (args.strict and skipped) or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
