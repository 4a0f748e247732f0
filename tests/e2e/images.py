"""Build and cache the tier-3 bed's images: Xen, the 6.1 kernel, dom0 and domU root filesystems.

Everything comes from Debian packages.  Each artefact lives under CACHE in a folder whose name
carries a key made of the package versions it was built from and a hash of the recipe (this file
and the package lists), so a changed recipe or a security update rebuilds it and an unchanged
one is reused.  The slow part (debootstrap, about a minute per root filesystem) therefore runs
once per machine; a warm run only repacks the small per-run overlays (see bed.py).
"""

import concurrent.futures
import gzip
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("E2E_CACHE", "/var/cache/xe-quiesce/e2e"))
HERE = Path(__file__).resolve().parent
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITE = "bookworm"
HYPERVISOR_PKG = "xen-hypervisor-4.17-amd64"
KERNEL_META = "linux-image-amd64"

# Modules both domains need (their dependencies are added from modules.dep): the dom0 backends
# and control devices, the domU's blkfront, and the filesystems and device-mapper both use.
MODULES = [
    "xenfs", "xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xen-blkback",
    "xen-blkfront", "loop", "ext4", "xfs", "dm-mod", "crc32c_generic", "overlay",
    "virtio_pci", "virtio_blk",
]
# What the domU's boot initramfs loads to reach its root disk.
BOOT_MODULES = ["xen-blkfront", "crc32c_generic", "ext4", "overlay"]

# Packages on top of minbase.  dom0 runs the toolstack and checks the copies; the domU runs the
# agent (its Depends are installed up front: the domU has no network to fetch them) and the
# writer workload.  python3-pyxs/click/psutil in dom0 let the product's host role run there.
PACKAGES = {
    "dom0": ["xen-utils-4.17", "xenstore-utils", "kmod", "busybox", "procps", "python3",
             "python3-pyxs", "python3-click", "python3-psutil", "e2fsprogs", "xfsprogs",
             "lvm2", "util-linux"],
    "domu": ["xenstore-utils", "kmod", "busybox", "procps", "python3", "python3-pyxs",
             "python3-click", "python3-psutil", "e2fsprogs", "lvm2", "util-linux"],
}

# Removed after install: large, never read under emulation, and every MiB is unpacked at boot.
STRIP = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "usr/share/lintian", "var/cache/apt", "var/cache/debconf/templates.dat-old",
         "var/lib/apt/lists", "usr/lib/python3.11/test", "usr/share/i18n"]


# depmod, debootstrap, chroot and losetup live in sbin, which a developer's PATH may lack.
os.environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", "")


def log(msg):
    print("e2e: " + msg, file=sys.stderr, flush=True)


def sh(*cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(list(cmd), **kw)


def out(*cmd):
    return subprocess.run(list(cmd), check=True, stdout=subprocess.PIPE,
                          universal_newlines=True).stdout


def candidates(packages):
    """Candidate versions from the host's apt lists: the cache key, and the versions to pin."""
    text = out("apt-cache", "policy", *packages)
    versions, name = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            name = line[:-1]
        elif line.strip().startswith("Candidate:") and name:
            versions[name] = line.split(":", 1)[1].strip()
    missing = [p for p in packages if versions.get(p, "(none)") == "(none)"]
    if missing:
        raise SystemExit("e2e: apt has no candidate for %s (run apt-get update)" % missing)
    return versions


def kernel_package():
    """The versioned kernel package behind linux-image-amd64 (e.g. linux-image-6.1.0-56-amd64)."""
    for line in out("apt-cache", "depends", KERNEL_META).splitlines():
        dep = line.strip()
        if dep.startswith("Depends: linux-image-"):
            return dep.split()[1]
    raise SystemExit("e2e: cannot resolve %s" % KERNEL_META)


def key_of(*parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True).encode() if not isinstance(part, bytes)
                      else part)
    return digest.hexdigest()[:16]


def fetch_deb(package, version):
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob("%s_*.deb" % package))
    wanted = [d for d in found if d.name.split("_")[1].replace("%3a", ":") == version]
    if wanted:
        return wanted[0]
    for old in found:
        old.unlink()
    sh("apt-get", "download", "-q", "%s=%s" % (package, version), cwd=str(debs),
       stdout=subprocess.DEVNULL)
    return next(debs.glob("%s_*.deb" % package))


def unmount_under(path):
    """Undo mounts a failed chroot step left inside path, before anything deletes it."""
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        sh("umount", "-l", point, check=False)


def wipe(path):
    unmount_under(path)
    shutil.rmtree(str(path), ignore_errors=True)


def replace_stale(kind, keep):
    """Drop earlier builds of the same artefact so the cache does not grow with every update."""
    for old in CACHE.glob(kind + "-*"):
        if old != keep:
            wipe(old) if old.is_dir() else old.unlink()


def xen_image(version):
    """Gunzipped multiboot Xen: QEMU's -kernel loads it directly, no bootloader needed."""
    target = CACHE / ("xen-" + key_of(version)) / "xen"
    if target.exists():
        return target
    log("extracting Xen %s" % version)
    deb = fetch_deb(HYPERVISOR_PKG, version)
    with tempfile.TemporaryDirectory(dir=str(CACHE)) as tmp:
        sh("dpkg-deb", "-x", str(deb), tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(os.path.join(tmp, "boot/xen-4.17-amd64.gz")) as src:
            (target.parent / "xen.tmp").write_bytes(src.read())
        os.rename(str(target.parent / "xen.tmp"), str(target))
    replace_stale("xen", target.parent)
    return target


def kernel_tree(package, version):
    """The kernel package unpacked once; the rootfs builds copy their modules from it."""
    tree = CACHE / ("kernel-" + key_of(package, version))
    if (tree / "ok").exists():
        return tree
    log("extracting %s %s" % (package, version))
    deb = fetch_deb(package, version)
    shutil.rmtree(str(tree), ignore_errors=True)
    tree.mkdir(parents=True)
    sh("dpkg-deb", "-x", str(deb), str(tree))
    sh("depmod", "-b", str(tree), kernel_release(tree))  # the package leaves this to postinst
    (tree / "ok").touch()
    replace_stale("kernel", tree)
    return tree


def kernel_release(tree):
    return next((tree / "lib/modules").iterdir()).name


def module_order(tree, names):
    """Relative paths of the named modules and everything they need, dependencies first."""
    src = tree / "lib/modules" / kernel_release(tree)
    deps = {}
    for line in (src / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[Path(path).name.split(".ko")[0].replace("-", "_")] = (path, rest.split())
    by_path = {path: name for name, (path, _) in deps.items()}
    order = []

    def visit(name):
        path, needs = deps[name]
        if path not in order:
            for dep in needs:
                visit(by_path[dep])
            order.append(path)
    for name in names:
        visit(name.replace("-", "_"))
    return order


def install_modules(tree, root, names):
    """Copy the modules and their dependencies into root and run depmod there."""
    release = kernel_release(tree)
    src, dst = tree / "lib/modules" / release, root / "lib/modules" / release
    for rel in module_order(tree, names):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(src / rel), str(dst / rel))
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        shutil.copy2(str(src / meta), str(dst / meta))
    sh("depmod", "-b", str(root), release)


def chroot_install(root, packages, buildlog):
    """apt inside the new root with bookworm-security enabled, so the tools match the hypervisor."""
    (root / "etc/apt/sources.list").write_text(
        "deb {m} {s} main\ndeb {m} {s}-updates main\ndeb {sec} {s}-security main\n".format(
            m=MIRROR, sec=SECURITY, s=SUITE))
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8",
               PATH="/usr/sbin:/usr/bin:/sbin:/bin")
    sh("mount", "-t", "proc", "proc", str(root / "proc"))
    try:
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "dist-upgrade", "-y", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + packages,
                    ["apt-get", "clean"]):
            sh("chroot", str(root), *cmd, env=env, stdout=buildlog, stderr=subprocess.STDOUT)
    finally:
        sh("umount", str(root / "proc"))
    policy.unlink()


def pack_cpio(root, target):
    """Uncompressed newc: decompressing under TCG emulation costs more than the bytes."""
    tmp = target.with_suffix(".tmp")
    with open(str(tmp), "wb") as fh:
        files = subprocess.Popen(["find", ".", "-xdev", "-print0"], cwd=str(root),
                                 stdout=subprocess.PIPE)
        sh("cpio", "--null", "-o", "-H", "newc", "--quiet", cwd=str(root), stdin=files.stdout,
           stdout=fh)
        if files.wait():
            raise SystemExit("e2e: find failed in %s" % root)
    os.rename(str(tmp), str(target))


def base_root(kind, pins):
    """debootstrap, the packages, the strip: the slow stage, keyed by versions and recipe."""
    packages = sorted(PACKAGES[kind])
    versions = candidates(packages)
    versions.update(pins)
    key = key_of(kind, versions, STRIP, inspect.getsource(base_root),
                 inspect.getsource(chroot_install))
    home = CACHE / ("rootfs-%s-%s" % (kind, key))
    if (home / "installed").exists():
        return home
    log("building the %s root filesystem (debootstrap, about a minute)" % kind)
    wipe(home)
    root = home / "root"
    root.mkdir(parents=True)
    with open(str(home / "build.log"), "w") as buildlog:
        sh("debootstrap", "--variant=minbase", SUITE, str(root), MIRROR, stdout=buildlog,
           stderr=subprocess.STDOUT)
        chroot_install(root, ["%s=%s" % (p, pins[p]) if p in pins else p for p in packages],
                       buildlog)
    for rel in STRIP:
        shutil.rmtree(str(root / rel), ignore_errors=True)
    (root / "var/cache/apt").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/apt/lists").mkdir(parents=True, exist_ok=True)
    (home / "versions.json").write_text(json.dumps(versions, indent=1, sort_keys=True))
    (home / "installed").touch()
    replace_stale("rootfs-" + kind, home)
    return home


def rootfs(kind, pins, ktree, pack):
    """A domain's root folder with the kernel's modules (and, with pack, its cpio)."""
    home = base_root(kind, pins)
    root = home / "root"
    marker = home / ("finished-" + key_of(kernel_release(ktree), MODULES, pack,
                                          inspect.getsource(install_modules)))
    if not marker.exists():
        for old in home.glob("finished-*"):
            old.unlink()
        shutil.rmtree(str(root / "lib/modules"), ignore_errors=True)
        install_modules(ktree, root, MODULES)
        if pack:
            pack_cpio(root, home / "base.cpio")
        marker.touch()
    return home


def busybox_static():
    """A static busybox for the domU's boot initramfs (it runs before any library is there)."""
    version = candidates(["busybox-static"])["busybox-static"]
    target = CACHE / ("busybox-" + key_of(version)) / "busybox"
    if not target.exists():
        deb = fetch_deb("busybox-static", version)
        with tempfile.TemporaryDirectory(dir=str(CACHE)) as tmp:
            sh("dpkg-deb", "-x", str(deb), tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.join(tmp, "bin/busybox"), str(target))
        replace_stale("busybox", target.parent)
    return target


def domu_boot(ktree):
    """The domU's small boot initramfs: busybox, blkfront/ext4/overlay, and guest/boot-init,
    which mounts the root disk (read-only, under a tmpfs overlay) and switches to it.  The big
    root filesystem thus stays on a disk: nothing copies or unpacks it at each domU start."""
    busybox = busybox_static()
    script = (HERE / "guest/boot-init").read_bytes()
    key = key_of(kernel_release(ktree), BOOT_MODULES, script, str(busybox),
                 inspect.getsource(domu_boot))
    target = CACHE / ("domu-boot-" + key) / "boot.cpio"
    if target.exists():
        return target
    release = kernel_release(ktree)
    with tempfile.TemporaryDirectory(dir=str(CACHE)) as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy2(str(busybox), str(root / "bin/busybox"))
        (root / "init").write_bytes(script)
        (root / "init").chmod(0o755)
        order = module_order(ktree, BOOT_MODULES)
        for rel in order:
            dst = root / "lib/modules" / release / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(str(ktree / "lib/modules" / release / rel), str(dst))
        (root / "modules").write_text("".join("/lib/modules/%s/%s\n" % (release, rel)
                                              for rel in order))
        target.parent.mkdir(parents=True, exist_ok=True)
        pack_cpio(root, target)
    replace_stale("domu-boot", target.parent)
    return target


class Images(object):
    """Paths of everything a boot needs."""

    def __init__(self, **paths):
        self.__dict__.update(paths)


def build():
    CACHE.mkdir(parents=True, exist_ok=True)
    kpkg = kernel_package()
    versions = candidates([HYPERVISOR_PKG, kpkg, "xen-utils-4.17"])
    if versions["xen-utils-4.17"] != versions[HYPERVISOR_PKG]:
        raise SystemExit("e2e: xen-utils-4.17 %s does not match the hypervisor %s"
                         % (versions["xen-utils-4.17"], versions[HYPERVISOR_PKG]))
    xen = xen_image(versions[HYPERVISOR_PKG])
    ktree = kernel_tree(kpkg, versions[kpkg])
    vmlinuz = ktree / "boot" / ("vmlinuz-" + kernel_release(ktree))
    pins = {"xen-utils-4.17": versions[HYPERVISOR_PKG]}
    # The two debootstraps are mostly dpkg and network waits: run them side by side.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        dom0 = pool.submit(rootfs, "dom0", pins, ktree, True)
        domu = pool.submit(rootfs, "domu", {}, ktree, False)
        return Images(xen=xen, vmlinuz=vmlinuz, dom0=dom0.result(), domu=domu.result(),
                      domu_boot=domu_boot(ktree), versions=versions)


if __name__ == "__main__":
    print(json.dumps({k: str(v) for k, v in vars(build()).items()}, indent=1))
