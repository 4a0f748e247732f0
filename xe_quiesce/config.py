"""The agent's INI configuration: one schema, parsed once, every bad value a clear error.

The schema is a table so that the parser, the defaults and the error messages cannot
drift apart. Unknown keys are errors: a typo such as `max_frozen` silently ignored
would leave the admin believing in a limit that is not there.
"""
import configparser
import ipaddress
import math
import numbers
import os
import shlex
import types

from .errors import ConfigError, QuiesceError

DEFAULT_PATH = "/etc/xe-quiesce/xe-quiesce.conf"
ENV_VAR = "XE_QUIESCE_CONFIG"
HOOK_SECTION_PREFIX = "hook:"


# The parsers raise ValueError in our own words: Python's ("could not convert string to
# float") would reach the admin otherwise.

def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 86400:
        raise ValueError("must be a number of seconds between 0 and 86400")
    return value


def _words(text):
    try:
        return shlex.split(text)
    except ValueError:
        raise ValueError("has a quote that is never closed")


def _networks(text):
    networks = []
    for word in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError("{!r} is not an IP address or network (such as 192.0.2.10 or "
                             "10.0.0.0/8)".format(word))
    return networks


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < 65536:
        raise ValueError("must be a TCP port between 1 and 65535")
    return value


def _bool(text):
    lowered = text.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def _choice(*allowed):
    def parse(text):
        if text not in allowed:
            raise ValueError("must be one of: " + ", ".join(allowed))
        return text
    return parse


def _text(text):
    return text.strip()


# section -> key -> (parser, default). Attribute names are the keys with '-' -> '_'.
SCHEMA = {
    "freeze": {
        "mounts": (_words, []),
        "include": (_words, []),
        "exclude": (_words, []),
        "max-frozen": (_seconds, 60.0),
        "on-ebusy": (_choice("fail", "tolerate"), "fail"),
        "sync-first": (_bool, True),
        "concurrent": (_bool, True),
        "expedite-rcu": (_bool, True),
    },
    "hooks": {
        "dir": (_text, "/etc/xe-quiesce/hooks.d"),
        "timeout": (_seconds, 30.0),
    },
    "xenstore": {
        "uri": (_text, "xenbus"),
        "domain-path": (_text, ""),
        "request-timeout": (_seconds, 10.0),
    },
    "xo-sync-hook": {
        "allow-from": (_networks, []),
        "secret-file": (_text, ""),
        "port": (_port, 1727),
        "address": (_text, ""),
        "cert-file": (_text, ""),
        "key-file": (_text, ""),
        "tls-dir": (_text, "/etc/xe-quiesce/tls"),
        "sync-timeout": (_seconds, 60.0),
    },
    "state": {
        "run-dir": (_text, "/run/xe-quiesce"),
    },
}

# Per-hook sections, "[hook:NAME]", may override these keys of [hooks].
HOOK_KEYS = {"timeout": _seconds}


def _attr(key):
    return key.replace("-", "_")


def _defaults():
    sections = {}
    for section, keys in SCHEMA.items():
        values = {_attr(key): default for key, (_parser, default) in keys.items()}
        sections[section] = types.SimpleNamespace(**values)
    return sections


class Config(object):
    """The parsed configuration: `config.freeze.max_frozen`, `config.xo.port`, ...

    `hook_overrides` maps a hook file name to its own settings (e.g. its timeout).
    """

    def __init__(self, path, sections, hook_overrides):
        self.path = path
        self.freeze = sections["freeze"]
        self.hooks = sections["hooks"]
        self.xenstore = sections["xenstore"]
        self.xo = sections["xo-sync-hook"]
        self.state = sections["state"]
        self.hook_overrides = hook_overrides

    def located(self, error):
        """A ConfigError raised outside this module ("[freeze] mounts: ...") with this
        file's name in front, as every configuration error names its file."""
        message = str(error)
        if message.startswith(self.path + ":"):
            return error
        return ConfigError("{}: {}".format(self.path, message))

    def hook_timeout(self, name):
        """The timeout of one hook: its own [hook:NAME] value, else [hooks] timeout."""
        return self.hook_overrides.get(name, {}).get("timeout", self.hooks.timeout)


def session_timeout(value, max_frozen, name="timeout"):
    """A requested freeze timeout, checked where every request is served (CLI option and
    control socket alike): a finite number of seconds in (0, max-frozen]. None: the
    default (max-frozen). JSON admits 1e999 (infinity) and NaN, so both are refused here.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise QuiesceError("{} must be a number of seconds".format(name))
    if not (math.isfinite(value) and 0 < value <= max_frozen):
        raise QuiesceError("{} must be between 0 and [freeze] max-frozen ({:g} s)".format(
            name, max_frozen))
    return float(value)


def config_path(explicit=None, environ=None):
    """Which file to read: --config, then $XE_QUIESCE_CONFIG, then the default path."""
    environ = os.environ if environ is None else environ
    return explicit or environ.get(ENV_VAR) or DEFAULT_PATH


def load_config(explicit=None, environ=None):
    """Read the configuration; a missing *default* file means all defaults.

    A file named by --config or the environment must exist: a path typed wrong there
    would otherwise run with defaults the admin did not choose.
    """
    path = config_path(explicit, environ)
    named = path != DEFAULT_PATH
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        if named:
            raise ConfigError("{}: no such configuration file".format(path))
        data = b""
    except OSError as error:
        raise ConfigError("{}: cannot read: {}".format(path, error.strerror))
    try:
        text = data.decode("utf-8")  # whatever the locale: C on many minimal guests
    except UnicodeDecodeError as error:
        raise ConfigError("{}: line {}: not UTF-8 text (byte 0x{:02x})".format(
            path, data[:error.start].count(b"\n") + 1, data[error.start]))
    return parse_config(text, path)


def _syntax_error(error, path):
    """configparser's complaint in our words, with the line it is about."""
    if isinstance(error, configparser.MissingSectionHeaderError):
        return "line {}: {!r} comes before any [section] header".format(
            error.lineno, error.line.strip())
    if isinstance(error, configparser.DuplicateSectionError):
        return "line {}: section [{}] appears twice".format(error.lineno, error.section)
    if isinstance(error, configparser.DuplicateOptionError):
        return "line {}: [{}] {} is set twice".format(error.lineno, error.section,
                                                      error.option)
    if isinstance(error, configparser.ParsingError) and error.errors:
        return "line {}: not a `key = value` line".format(error.errors[0][0])
    return " ".join(str(error).replace(repr(path), "").split())


def parse_config(text, path="<config>"):
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    parser.optionxform = str
    try:
        parser.read_string(text, source=path)
    except configparser.Error as error:
        raise ConfigError("{}: {}".format(path, _syntax_error(error, path)))
    sections = _defaults()
    hook_overrides = {}
    for section in parser.sections():
        if section.startswith(HOOK_SECTION_PREFIX):
            name = section[len(HOOK_SECTION_PREFIX):]
            hook_overrides[name] = _parse_section(parser, path, section, HOOK_KEYS)
            continue
        if section not in SCHEMA:
            raise ConfigError("{}: unknown section [{}]".format(path, section))
        parsers = {key: parser_ for key, (parser_, _default) in SCHEMA[section].items()}
        for attr, value in _parse_section(parser, path, section, parsers).items():
            setattr(sections[section], _attr(attr), value)
    return Config(path, sections, hook_overrides)


def _parse_section(parser, path, section, parsers):
    values = {}
    for key, raw in parser.items(section):
        if key not in parsers:
            raise ConfigError("{}: [{}] {}: unknown key (known: {})".format(
                path, section, key, ", ".join(sorted(parsers))))
        try:
            values[key] = parsers[key](raw)
        except ValueError as error:
            raise ConfigError("{}: [{}] {} = {!r}: {}".format(
                path, section, key, raw, error))
    return values
