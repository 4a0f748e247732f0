"""Malformed configurations and command lines: every one is a single line in our own
words, exit status 1, no traceback, whatever the command.

The random part mutates the shipped configuration (seeded, XE_QUIESCE_FUZZ_SEED) and
parses each mutant in process; only mutants that fail to parse are then given to the
real commands, so no test can freeze what a random configuration would pick.
"""
import os
import random
import subprocess
import sys

import pytest

from tests.fuzz import figures
from xe_quiesce.config import load_config
from xe_quiesce.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(ROOT, "data", "xe-quiesce.conf")
MUTANTS = 600
COMMANDS = [["plan"], ["freeze"], ["thaw"], ["status"], ["hooks"],
            ["run", "--xenstore", "unix:/nonexistent"]]
TRACEBACK = "Traceback"


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "xe_quiesce.cli"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60, **kwargs)


def assert_one_line(result, *words):
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result
    assert len(lines) == 1 and lines[0].startswith("xe-quiesce: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# -- configurations ---------------------------------------------------------------------

HOSTILE = {
    "not-utf8": (b"[freeze]\nmax-frozen = 5\xff\n", ["line 2", "not UTF-8"]),
    "latin1-comment": (b"# r\xe9glages\n[freeze]\n", ["line 1", "not UTF-8"]),
    "no-section": (b"max-frozen = 5\n", ["line 1", "before any [section]"]),
    "twice": (b"[freeze]\n[freeze]\n", ["line 2", "[freeze] appears twice"]),
    "key-twice": (b"[freeze]\nmax-frozen=1\nmax-frozen=2\n", ["[freeze] max-frozen is set"]),
    "seconds-word": (b"[freeze]\nmax-frozen = abc\n", ["[freeze] max-frozen", "seconds"]),
    "seconds-nan": (b"[freeze]\nmax-frozen = nan\n", ["[freeze] max-frozen", "seconds"]),
    "seconds-inf": (b"[hooks]\ntimeout = inf\n", ["[hooks] timeout", "seconds"]),
    "port-word": (b"[xo-sync-hook]\nport = https\n", ["[xo-sync-hook] port", "TCP port"]),
    "network": (b"[xo-sync-hook]\nallow-from = 10.0.0.0/8 evil\n", ["allow-from", "'evil'"]),
    "quote": (b"[freeze]\nmounts = \"/srv\n", ["[freeze] mounts", "quote"]),
    "bool": (b"[freeze]\nsync-first = maybe\n", ["[freeze] sync-first", "yes or no"]),
    "not-a-line": (b"[freeze]\njust words\n", ["line 2", "key = value"]),
    "unknown-section": (b"[frezee]\n", ["unknown section [frezee]"]),
    "unknown-key": (b"[freeze]\nmaxfrozen = 5\n", ["[freeze] maxfrozen", "unknown key"]),
    "not-a-mount": (b"[freeze]\nmounts = /nonexistent-xq\n",
                    ["[freeze] mounts", "/nonexistent-xq is not a mount point"]),
}
PYTHON_WORDS = ("could not convert", "invalid literal", "does not appear to be",
                "No closing quotation", "codec can't decode", "File contains")


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_configuration_is_one_line_naming_file_section_and_key(tmp_path, name):
    text, words = HOSTILE[name]
    path = tmp_path / "x.conf"
    # a private run directory, should a command get that far (none may)
    path.write_bytes(text + "\n[state]\nrun-dir = {}\n".format(tmp_path / "run").encode())
    commands = [["plan"], ["freeze"]] if name == "not-a-mount" else COMMANDS
    for command in commands:
        line = assert_one_line(cli(*(command + ["--config", str(path)])), str(path), *words)
        assert not any(word in line for word in PYTHON_WORDS), line
        figures.count("malformed configurations: command runs, one line each")


def mutate(chance, text):
    """One random damage to a configuration: bytes, lines, or values."""
    data = bytearray(text)
    lines = text.split(b"\n")
    kind = chance.randrange(7)
    if kind == 0:  # random bytes anywhere
        for _ in range(chance.randint(1, 8)):
            data.insert(chance.randrange(len(data) + 1), chance.randrange(256))
        return bytes(data)
    if kind == 1:  # truncated
        return bytes(data[:chance.randrange(len(data) + 1)])
    if kind == 2:  # a line duplicated
        line = chance.choice(lines)
        lines.insert(chance.randrange(len(lines) + 1), line)
    elif kind == 3:  # a commented key switched on with a random value
        keys = [i for i, line in enumerate(lines) if line.startswith(b"#") and b" = " in line]
        i = chance.choice(keys)
        key = lines[i][1:].split(b" = ")[0]
        value = bytes(chance.choice(b"0123456789abc/-.:, \"'\\\xff\x00")
                      for _ in range(chance.randint(0, 12)))
        lines[i] = key + b" = " + value
    elif kind == 4:  # a line indented (a continuation) or its section header broken
        i = chance.randrange(len(lines))
        lines[i] = (b"  " + lines[i]) if chance.random() < 0.5 else lines[i].replace(b"]", b"")
    elif kind == 5:  # a huge value
        lines.append(b"[freeze]\nmounts = " + b"/x" * chance.randint(1000, 100000))
    else:  # lines swapped
        i, j = chance.randrange(len(lines)), chance.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    return b"\n".join(lines)


def test_random_mutants_of_the_shipped_configuration(tmp_path):
    seed = figures.SEED
    chance = random.Random(seed)
    with open(SHIPPED, "rb") as handle:
        shipped = handle.read()
    path = tmp_path / "mutant.conf"
    refused, accepted, samples = 0, 0, []
    for _ in range(MUTANTS):
        text = mutate(chance, shipped)
        path.write_bytes(text)
        try:
            load_config(str(path))
        except ConfigError as error:
            message = str(error)
            assert "\n" not in message and message.startswith(str(path) + ": "), message
            assert not any(word in message for word in PYTHON_WORDS), message
            refused += 1
            if len(samples) < 3:
                samples.append(text)
        else:
            accepted += 1
        # anything but ConfigError escapes and fails the test (the seed is in the figures)
    for text in samples:  # and the real commands say the same in one line
        path.write_bytes(text)
        for command in (["plan"], ["status"]):
            assert_one_line(cli(*(command + ["--config", str(path)])), str(path))
    figures.count("malformed configurations: random mutants parsed", MUTANTS)
    figures.count("malformed configurations: mutants refused in one line", refused)
    assert refused


# -- command lines ---------------------------------------------------------------------

BAD_COMMANDS = [
    (["frobnicate"], ["No such command"]),
    (["plan", "--bogus"], ["--bogus", "--help"]),
    (["freeze", "--timeout", "soon"], ["--timeout"]),
    (["freeze", "--timeout", "nan"], ["--timeout must be between 0 and"]),
    (["freeze", "--timeout", "inf"], ["--timeout must be between 0 and"]),
    (["freeze", "--timeout", "-1"], ["--timeout must be between 0 and"]),
    (["freeze", "--timeout", "0"], ["--timeout must be between 0 and"]),
    (["freeze", "--timeout", "1e9"], ["--timeout must be between 0 and"]),
    (["plan", "--root", "/nonexistent"], ["--root /nonexistent"]),
    (["plan", "--root", "/etc/hostname"], ["--root /etc/hostname"]),
    (["status", "--config", "/nonexistent.conf"], ["/nonexistent.conf: no such"]),
    (["thaw", "--config", "/etc"], ["/etc: cannot read"]),
    (["hooks", "--config", "/nonexistent.conf"], ["/nonexistent.conf: no such"]),
    (["run", "--xenstore", "carrier-pigeon:x", "--config", "@EMPTY"], ["carrier-pigeon"]),
]


@pytest.mark.parametrize("argv, words", BAD_COMMANDS, ids=[" ".join(a) for a, _ in BAD_COMMANDS])
def test_a_malformed_command_is_one_line_exit_1(tmp_path, argv, words):
    empty = tmp_path / "empty.conf"
    empty.write_text("[state]\nrun-dir = {}\n".format(tmp_path / "run"))
    argv = [str(empty) if arg == "@EMPTY" else arg for arg in argv]
    if "--config" not in argv and argv[0] != "frobnicate":
        argv += ["--config", str(empty)]
    result = cli(*argv)
    assert TRACEBACK not in result.stderr
    assert_one_line(result, *words)
    figures.count("malformed commands: one line each")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
@pytest.mark.parametrize("command", ["freeze", "thaw", "status", "run"])
def test_not_root_is_one_line(tmp_path, command):
    result = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                             "--clear-groups", sys.executable, "-m", "xe_quiesce.cli",
                             command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    assert (result.returncode, result.stderr) == (1, "xe-quiesce: must be run as root\n")
