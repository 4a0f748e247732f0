"""The Xen Orchestra tag that makes XO reach this guest's sync hook, and why that one.

XO's plain tag `xo:notify-on-snapshot` sends /sync to https://<address>:1727, <address>
being picked by XO (`getVmAddress` in @xen-orchestra/xapi's vm.mjs) from the VM's guest
metrics `networks`, which XAPI builds from what the guest tools write under `attr/` in
xenstore: the first key, in sorted order, of the form N/ip or N/ipv4/M, else the first
N/ipv6/M. Two of XO's outcomes are traps: an IPv6 address picked that way is assigned
bare to URL.hostname, which the URL parser ignores, so XO asks https://localhost:1727
(its own host); and no address at all makes XO throw before its snapshot call, so there
is no snapshot at all. The tag with a URL (`xo:notify-on-snapshot=https://[v6]:port`)
avoids both; XO keeps its host, port and query string.
"""
import ipaddress
import re
import socket

from ..xenstore import XenstoreClient, XenstoreError, XenstoreNotFound

XO_PORT = 1727
TAG = "xo:notify-on-snapshot"
IPV4_KEY = re.compile(r"^\d+/ip(?:v4/\d+)?$")
IPV6_KEY = re.compile(r"^\d+/ipv6/\d+$")


def xo_address(networks):
    """The address XO picks from `networks` (its getVmAddress), or None."""
    ipv6 = None
    for key in sorted(networks):
        if IPV4_KEY.match(key):
            return networks[key]
        if ipv6 is None and IPV6_KEY.match(key):
            ipv6 = networks[key]
    return ipv6


def networks_from_xenstore(client, domain_path):
    """The guest metrics `networks` XAPI derives from the guest tools' attr/ keys:
    attr/vif/N/ipv4/M and attr/vif/N/ipv6/M (xe-guest-utilities 7+, xen-guest-agent),
    attr/ethN/ip (older tools)."""
    attr = domain_path + "/attr"
    networks = {}
    for name in _ls(client, attr):
        if name == "vif":
            for vif in _ls(client, attr + "/vif"):
                for family in ("ipv4", "ipv6"):
                    base = "{}/vif/{}/{}".format(attr, vif, family)
                    for index in _ls(client, base):
                        value = client.read_or(base + "/" + index)
                        if value:
                            networks["{}/{}/{}".format(vif, family, index)] = value
        elif re.match(r"^eth\d+$", name):
            value = client.read_or("{}/{}/ip".format(attr, name))
            if value:
                networks["{}/ip".format(name[3:])] = value
    return networks


def _ls(client, path):
    try:
        return client.ls(path)
    except XenstoreNotFound:
        return []


def url_tag(address, port):
    host = "[{}]".format(address) if ":" in address else address
    return "{}=https://{}:{}".format(TAG, host, port)


def advice(networks, port, listen_address="", fallback_addresses=()):
    """(tag, why): what to put on the VM in XO for a listener on `port`.

    `listen_address` is [xo-sync-hook] address when set; `fallback_addresses` are this
    guest's own addresses, used when the guest tools report none.
    """
    picked = xo_address(networks)
    if picked is not None and ":" not in picked:
        if listen_address and listen_address != picked:
            return url_tag(listen_address, port), (
                "XO would pick {} (what the guest tools report), but the hook listens only "
                "on {}".format(picked, listen_address))
        if port != XO_PORT:
            return url_tag(picked, port), (
                "XO would pick {}, but the plain tag always means port {}".format(
                    picked, XO_PORT))
        return TAG, "XO picks {} (the first IPv4 address the guest tools report)".format(
            picked)
    if picked is not None:
        address = listen_address or picked
        return url_tag(address, port), (
            "the guest tools report only IPv6 addresses ({}); with the plain tag XO would "
            "ask https://localhost:{} (its own host)".format(picked, XO_PORT))
    address = listen_address or _first_usable(fallback_addresses)
    return url_tag(address or "<this guest's address>", port), (
        "the guest tools report no address: with the plain tag XO would take no snapshot "
        "at all (\"no VM address found\")")


def advice_for_this_vm(uri, domain_path, port, listen_address):
    """(tag, why) from the addresses the guest tools report in xenstore at `uri` under
    `domain_path` (None: not known, none read), with this guest's own as the fallback.

    Read on a connection of its own: the XAPI trigger's is its loop's.
    """
    networks, note = {}, ""
    if domain_path:
        try:
            with XenstoreClient(uri, timeout=2.0) as client:
                networks = networks_from_xenstore(client, domain_path)
        except (XenstoreError, OSError) as error:
            note = "; the guest tools' addresses could not be read: {}".format(error)
    import psutil  # a status request's, not the idle daemon's memory

    own = [entry.address for entries in psutil.net_if_addrs().values()
           for entry in entries if entry.family in (socket.AF_INET, socket.AF_INET6)]
    tag, why = advice(networks, port, listen_address, own)
    return tag, why + note


def _first_usable(addresses):
    """A global address, IPv4 first (the order XO prefers)."""
    candidates = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local or address.is_multicast:
            continue
        candidates.append((address.version, text))
    return min(candidates)[1] if candidates else None
