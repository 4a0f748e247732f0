"""Who may call an HTTPS hook: the client's address against allow-from, and a Bearer secret.

Shared by the guest's Xen Orchestra listener (triggers/xo.py) and the dom0 relay
(host/relay.py), which check callers the same way; the host RPM ships this module
without the guest's triggers.
"""
import base64
import ipaddress
import os
import stat

from .errors import ConfigError


def read_secret(path, label="[xo-sync-hook]"):
    """The shared secret; the file must be root's and unreadable by others.

    `label` names the setting in messages (the dom0 relay's is an option)."""
    try:
        info = os.stat(path)
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as error:
        raise ConfigError("{} secret-file {}: {}".format(label, path, error.strerror))
    if info.st_uid != 0 and info.st_uid != os.geteuid():
        raise ConfigError("{} secret-file {} must be owned by root".format(label, path))
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("{} secret-file {} must not be accessible to group or "
                          "others (chmod 600)".format(label, path))
    if not secret:
        raise ConfigError("{} secret-file {} is empty".format(label, path))
    return secret


class AccessPolicy(object):
    def __init__(self, networks, secret):
        self.networks = networks
        self.expected = None
        if secret is not None:
            self.expected = b"Bearer " + base64.b64encode(secret)

    def allows(self, address, authorization):
        client = ipaddress.ip_address(address.split("%")[0])
        if getattr(client, "ipv4_mapped", None):
            client = client.ipv4_mapped
        if self.networks and not any(client in network for network in self.networks):
            return False
        if self.expected is not None:
            import hmac  # with the first request's TLS: hashlib's OpenSSL is not idle memory

            given = (authorization or "").encode("latin-1", "replace")
            return hmac.compare_digest(given, self.expected)
        return True
