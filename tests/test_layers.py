"""The package's folders are its layers; these tests keep each layer to what it may import.

linux/ (kernel and /proc effects) imports nothing of ours; core/ (one quiesce session) only
linux/ and the shared modules; triggers/ (what asks for a session) only core/ and the
shared modules; host/ (dom0) only what the host RPM ships. Around the package, the
dependencies run one way: testbed/ (the real components tests run against) uses only the
product, bench/ the product and testbed/, tests/ anything. Read from the source with ast,
so a lazy import inside a function counts as much as one at the top.
"""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "xe_quiesce")
# Modules at the package's top that guest and host share.
SHARED = {"xe_quiesce", "xe_quiesce.protocol", "xe_quiesce.errors", "xe_quiesce.config",
          "xe_quiesce.xenstore", "xe_quiesce.tls", "xe_quiesce.https", "xe_quiesce.access",
          "xe_quiesce.entry"}
HOST_SHIPS = {"xe_quiesce", "xe_quiesce.protocol", "xe_quiesce.errors", "xe_quiesce.xenstore",
              "xe_quiesce.tls", "xe_quiesce.https", "xe_quiesce.access", "xe_quiesce.entry"}
# What each layer may import of the package, besides itself.
ALLOWED = {
    "linux": set(),
    "core": {"linux", "xe_quiesce", "xe_quiesce.protocol", "xe_quiesce.errors",
             "xe_quiesce.config"},
    # The XAPI adapter pings systemd's watchdog (linux/sdnotify) from its own loop.
    "triggers": {"core", "linux.sdnotify"} | SHARED,
    "shared": SHARED,
    "host": HOST_SHIPS,
}


def _modules(package=PACKAGE):
    for directory, _, files in os.walk(package):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                relative = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if relative[-1] == "__init__":
                    relative = relative[:-1]
                yield ".".join(relative), path, name == "__init__.py"


def _imports(module, path, is_package, top="xe_quiesce"):
    """Every module of package `top` that `module` imports, as dotted names."""
    tree = ast.parse(open(path).read(), path)
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            # `from . import x`: x may be a module
            found.update(base + "." + alias.name for alias in node.names
                         if os.path.exists(os.path.join(ROOT, *(base + "." + alias.name).split("."))
                                           + ".py"))
    return {name for name in found if name == top or name.startswith(top + ".")}


def _layer(module):
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and os.path.isdir(os.path.join(PACKAGE, parts[1]))):
        return parts[1]
    return "shared" if module in SHARED else module  # daemon: the wiring, no rule


def _allowed(layer, name):
    if _layer(name) == layer:
        return True
    rule = ALLOWED[layer]
    short = name[len("xe_quiesce."):]
    return name in rule or _layer(name) in rule or short in rule


RULED = sorted((module, path, package) for module, path, package in _modules()
               if _layer(module) in ALLOWED)


def test_every_layer_has_modules():
    layers = {_layer(module) for module, _, _ in RULED}
    assert layers == set(ALLOWED)


@pytest.mark.parametrize("module,path,is_package", RULED, ids=[m for m, _, _ in RULED])
def test_a_module_imports_only_from_the_layers_below_it(module, path, is_package):
    layer = _layer(module)
    wrong = sorted(name for name in _imports(module, path, is_package)
                   if not _allowed(layer, name))
    assert wrong == [], "{} ({}) may not import {}".format(module, layer, wrong)


def test_the_guest_modules_do_not_import_host():
    for module, path, package in _modules():
        if _layer(module) != "host":
            assert not any(name.startswith("xe_quiesce.host")
                           for name in _imports(module, path, package)), module


def test_the_check_sees_a_wrong_import(tmp_path):
    """The rule is not vacuous: a core module importing a trigger is caught."""
    source = tmp_path / "bad.py"
    source.write_text("from ..triggers import xo\nfrom . import freezer\n")
    names = _imports("xe_quiesce.core.bad", str(source), False)
    assert names == {"xe_quiesce.triggers", "xe_quiesce.triggers.xo", "xe_quiesce.core",
                     "xe_quiesce.core.freezer"}
    assert not _allowed("core", "xe_quiesce.triggers.xo")
    assert _allowed("core", "xe_quiesce.core.freezer")


# Who may not import whom among the top-level packages: the product none of the others,
# the testbed only the product, the bench the product and the testbed.
NOT_IMPORTED = {"xe_quiesce": ("testbed", "bench", "tests"), "testbed": ("bench", "tests"),
                "bench": ("tests",)}
OUTER = sorted((module, path, package, top) for top in NOT_IMPORTED
               for module, path, package in _modules(os.path.join(ROOT, top)))


def test_every_outer_package_has_modules():
    assert {module.split(".")[0] for module, _, _, _ in OUTER} == set(NOT_IMPORTED)


@pytest.mark.parametrize("module,path,is_package,top", OUTER, ids=[m for m, _, _, _ in OUTER])
def test_dependencies_run_one_way_product_testbed_bench_tests(module, path, is_package, top):
    wrong = sorted(name for other in NOT_IMPORTED[top]
                   for name in _imports(module, path, is_package, other))
    assert wrong == [], "{} may not import {}".format(module, wrong)


def test_the_outer_check_sees_a_wrong_import(tmp_path):
    """A lazy import of the tests inside a bench function is caught."""
    source = tmp_path / "bad.py"
    source.write_text("def rig():\n    from tests.rig import fixtures\n")
    assert _imports("bench.bad", str(source), False, "tests") == {"tests.rig", "tests.rig.fixtures"}


# What `xe-quiesce thaw` loads: it runs inside the frozen window, so its start-up is part
# of that window. The same modules as before the package had folders (measured with
# `python -X importtime`), plus the two package inits: no click, no session, no daemon.
THAW_LOADS = {"xe_quiesce", "xe_quiesce.cli", "xe_quiesce.cli.fast", "xe_quiesce.cli.main",
              "xe_quiesce.config", "xe_quiesce.errors", "xe_quiesce.triggers",
              "xe_quiesce.triggers.control"}


def test_thaw_loads_no_more_of_ours_than_it_needs(tmp_path):
    """What is loaded when `xe-quiesce thaw` asks the daemon (its start-up)."""
    config = tmp_path / "xe-quiesce.conf"
    config.write_text("[state]\nrun-dir = {}\n".format(tmp_path / "run"))
    code = "\n".join([
        "import sys",
        "from xe_quiesce.triggers import control",
        "def request(*args, **kwargs):",
        "    print(' '.join(sorted(sys.modules)))",
        "    sys.exit(0)",
        "control.request = request",
        "sys.argv = ['xe-quiesce', 'thaw', '--config', {!r}]".format(str(config)),
        "from xe_quiesce.cli.main import main",
        "main()",
    ])
    loaded = set(subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                universal_newlines=True, check=True).stdout.split())
    assert {name for name in loaded if name.split(".")[0] == "xe_quiesce"} == THAW_LOADS
    assert not loaded & {"click", "psutil", "pyxs", "ssl", "logging"}
