"""Configuration: defaults, every documented key, and one clear line for bad input."""
import ipaddress
import os

import pytest

from xe_quiesce.config import DEFAULT_PATH, SCHEMA, load_config, parse_config
from xe_quiesce.errors import ConfigError


def test_defaults_when_the_default_file_is_missing(monkeypatch):
    monkeypatch.delenv("XE_QUIESCE_CONFIG", raising=False)
    if os.path.exists(DEFAULT_PATH):
        pytest.skip("this machine has a real configuration file")
    config = load_config()
    assert config.freeze.max_frozen == 60.0
    assert config.freeze.on_ebusy == "fail"
    assert config.freeze.mounts == []
    assert config.hooks.dir == "/etc/xe-quiesce/hooks.d"
    assert config.xenstore.uri == "xenbus" and config.xenstore.domain_path == ""
    assert config.xo.port == 1727 and config.xo.allow_from == []
    assert config.state.run_dir == "/run/xe-quiesce"


def test_every_documented_key_parses():
    config = parse_config("""
[freeze]
mounts = / "/srv/with space"
include = /data/*
exclude = /scratch*
max-frozen = 20
on-ebusy = tolerate
[hooks]
dir = /etc/hooks
timeout = 5
[hook:10-postgres]
timeout = 45
[xenstore]
uri = unix:/run/xenstored/socket
domain-path = /local/domain/7
[xo-sync-hook]
allow-from = 192.0.2.10, 2001:db8::/64
secret-file = /etc/xe-quiesce/secret
port = 11727
address = ::
cert-file = /c.pem
key-file = /k.pem
[state]
run-dir = /tmp/run
""")
    assert config.freeze.mounts == ["/", "/srv/with space"]
    assert config.freeze.include == ["/data/*"] and config.freeze.exclude == ["/scratch*"]
    assert config.freeze.max_frozen == 20 and config.freeze.on_ebusy == "tolerate"
    assert config.hook_timeout("10-postgres") == 45 and config.hook_timeout("other") == 5
    assert config.xenstore.domain_path == "/local/domain/7"
    assert config.xo.allow_from == [ipaddress.ip_network("192.0.2.10/32"),
                                    ipaddress.ip_network("2001:db8::/64")]
    assert config.xo.port == 11727 and config.state.run_dir == "/tmp/run"


@pytest.mark.parametrize("text, words", [
    ("[freeze]\nmax-frozen = soon\n", ["/etc/x.conf", "[freeze] max-frozen", "soon"]),
    ("[freeze]\nmax-frozen = -1\n", ["max-frozen", "between 0 and"]),
    ("[freeze]\non-ebusy = ignore\n", ["on-ebusy", "fail, tolerate"]),
    ("[freeze]\nmax_frozen = 5\n", ["max_frozen", "unknown key"]),
    ("[freez]\n", ["unknown section [freez]"]),
    ("[xo-sync-hook]\nport = 70000\n", ["port", "65535"]),
    ("[xo-sync-hook]\nallow-from = 10.0.0.300\n", ["allow-from", "10.0.0.300"]),
    ("no section\n", ["/etc/x.conf"]),
    ("[hook:a]\nretries = 3\n", ["[hook:a] retries", "unknown key"]),
])
def test_bad_values_are_one_clear_line(text, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/etc/x.conf")
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_named_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(str(tmp_path / "missing.conf"))


def test_environment_names_the_file(tmp_path):
    path = tmp_path / "env.conf"
    path.write_text("[freeze]\nmax-frozen = 7\n")
    assert load_config(environ={"XE_QUIESCE_CONFIG": str(path)}).freeze.max_frozen == 7


def test_cli_reports_a_bad_file_without_traceback(tmp_path, xe_quiesce):
    path = tmp_path / "bad.conf"
    path.write_text("[freeze]\nmax-frozen = never\n")
    result = xe_quiesce("plan", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "xe-quiesce: error: {}: [freeze] max-frozen = 'never': must be a number of seconds "
        "between 0 and 86400".format(path)]


def test_the_shipped_default_file_parses_to_the_defaults():
    path = os.path.join(os.path.dirname(__file__), "..", "data", "xe-quiesce.conf")
    shipped = load_config(path)
    defaults = parse_config("")
    for section in ("freeze", "hooks", "xenstore", "xo", "state"):
        assert vars(getattr(shipped, section)) == vars(getattr(defaults, section))


def test_the_shipped_default_file_documents_every_key():
    path = os.path.join(os.path.dirname(__file__), "..", "data", "xe-quiesce.conf")
    text = open(path).read()
    for section, keys in SCHEMA.items():
        assert "[{}]".format(section) in text
        for key in keys:
            assert "#{} =".format(key) in text, key
