"""Static checks of everything packaging ships: shell, lintian, rpmlint, systemd."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from .conftest import REPO, target_rpm

SH_SCRIPTS = ["init/sysvinit/xe-quiesce", "init/openrc/xe-quiesce",
              "debian/xe-guest-utilities-quiesce.postrm"]
SYS_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def check(argv, **kwargs):
    """Run a linter; on failure the assertion shows its whole output."""
    proc = subprocess.run(argv, cwd=REPO, env=SYS_ENV, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, **kwargs)
    assert proc.returncode == 0, "%s:\n%s" % (" ".join(argv), proc.stdout)
    return proc.stdout


@pytest.mark.parametrize("script", SH_SCRIPTS)
def test_posix_sh_parses(script):
    check(["sh", "-n", script])


@pytest.mark.parametrize("script", SH_SCRIPTS)
def test_shellcheck_clean(script):
    # SC2034: OpenRC reads the variables (command, pidfile, ...) that the script sets.
    check(["shellcheck", "-s", "sh", "-e", "SC2034", script])


def test_bash_completion_clean():
    check(["bash", "-n", "completion/bash/xe-quiesce"])
    check(["shellcheck", "completion/bash/xe-quiesce"])


def test_lintian_binary_clean(changes):
    # Overrides (each with its reason) are in debian/*.lintian-overrides.
    check(["lintian", "--fail-on", "error,warning", changes])


def test_lintian_source_clean(dsc):
    check(["lintian", "--fail-on", "error,warning", dsc])


def test_rpmlint_clean(version, rpm_sysv, srpm):
    # Filters, each with its reason, are in rpm/rpmlint.toml.
    targets = [target_rpm(version, dist) for dist in ("el8", "el9", "el10", "fc42", "fc43")]
    out = check(["rpmlint", "-c", "rpm/rpmlint.toml", "rpm/xe-guest-utilities-quiesce.spec",
                 rpm_sysv, srpm] + targets)
    assert re.search(r"\b0 errors, 0 warnings\b", out), out


def test_systemd_analyze_verify_unit_in_deb(deb):
    """The unit as the .deb installs it, its ExecStart binary present, next to this
    machine's own units (sysinit.target, ...); the chroot tests check each distro."""
    with tempfile.TemporaryDirectory() as root:
        shutil.copytree("/lib/systemd/system", os.path.join(root, "lib/systemd/system"),
                        symlinks=True)
        check(["dpkg-deb", "-x", deb, root])
        out = check(["systemd-analyze", "verify", "--man=no", "--root=" + root,
                     "xe-quiesce.service"])
        assert out.strip() == "", out


def test_man_page_renders_without_warnings():
    proc = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "man/xe-quiesce.8"],
                          cwd=REPO, env=dict(SYS_ENV, MANWIDTH="80"), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    assert (proc.returncode, proc.stderr) == (0, "")
    for section in ["COMMANDS", "OPTIONS", "HOOKS", "FILES", "EXIT STATUS"]:
        assert "\n" + section + "\n" in proc.stdout


def test_versions_agree(version):
    """setup.cfg's version is the one debian/changelog and the spec default release."""
    with open(os.path.join(REPO, "debian/changelog")) as fh:
        deb_version = re.match(r"\S+ \(([^)]+)\)", fh.readline()).group(1)
    with open(os.path.join(REPO, "rpm/xe-guest-utilities-quiesce.spec")) as fh:
        spec_version = re.search(r"%global upstream_version (\S+)}", fh.read()).group(1)
    assert (deb_version, spec_version) == (version, version)


def _unit_settings():
    settings = {}
    with open(os.path.join(REPO, "init/systemd/xe-quiesce.service")) as fh:
        for line in fh:
            if "=" in line and not line.startswith("#"):
                key, value = line.strip().split("=", 1)
                settings.setdefault(key, []).extend(value.split())
    return settings


def test_unit_starts_with_the_guest_tools_but_does_not_stop_with_them():
    unit = _unit_settings()
    tools = {"xe-linux-distribution.service", "xe-daemon.service", "xen-guest-agent.service"}
    assert tools <= set(unit["After"])
    # Only a target that always exists; the tools pull the unit in by drop-ins.
    assert unit["WantedBy"] == ["multi-user.target"]
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["ConditionVirtualization"] == ["xen"] and "WatchdogSec" in unit
    assert not {"PartOf", "BindsTo", "Requires", "Requisite"} & set(unit)


def _cli_surface():
    """(command, option) pairs of the real click CLI, plus the group's own options."""
    from xe_quiesce.cli.commands import cli
    pairs = [("", opt) for param in cli.params for opt in param.opts if opt.startswith("--")]
    for name, command in cli.commands.items():
        pairs.append((name, None))
        pairs += [(name, opt) for param in command.params for opt in param.opts
                  if opt.startswith("--")]
    return pairs


def test_man_page_and_completion_cover_the_cli():
    """A command or option added to the CLI must reach xe-quiesce(8) and the completion."""
    with open(os.path.join(REPO, "man/xe-quiesce.8")) as fh:
        man = fh.read().replace("\\-", "-")
    with open(os.path.join(REPO, "completion/bash/xe-quiesce")) as fh:
        completion = fh.read()
    missing = []
    for command, opt in _cli_surface():
        word = opt or command
        if not re.search(r"(^|[^\w-])%s($|[^\w-])" % re.escape(word), man, re.M):
            missing.append(("man", word))
        if opt is None:
            if not re.search(r"\b%s\b" % re.escape(command), completion):
                missing.append(("completion", command))
        elif command and not re.search(r"^\s+[\w|]*\b%s\b[\w|]*\) opts=\"[^\"]*%s\b"
                                       % (re.escape(command), re.escape(opt)),
                                       completion, re.M):
            missing.append(("completion", command, opt))
    assert missing == []


def test_license_file_is_what_the_packages_declare():
    """LICENSE, debian/copyright, setup.cfg and both specs name the same license."""
    def read(path):
        with open(os.path.join(REPO, path)) as fh:
            return fh.read()
    assert re.match(r"\s*GNU GENERAL PUBLIC LICENSE\n\s+Version 2, June 1991\n", read("LICENSE"))
    assert re.search(r"^Files: \*\n.*\nLicense: GPL-2$", read("debian/copyright"), re.M)
    assert "\nlicense = GPL-2.0-only\n" in read("setup.cfg")
    for spec in ("rpm/xe-guest-utilities-quiesce.spec", "rpm/xe-quiesce-host.spec"):
        licenses = re.findall(r"^License:\s+(.*)$", read(spec), re.M)
        assert licenses and all(entry.startswith("GPL-2.0-only") for entry in licenses)
        assert "%license LICENSE " in read(spec)
