"""`xe-quiesce-host check --all` and the plugin's `check` with `all`: the pool's coverage.

Real parts as in tests/host/test_companion.py: the command as a subprocess, the plugin
script run by the test XAPI as XAPI runs it (on the other host with that host's
inventory: its VMs come from there), the guest daemon for the VM with the agent.
"""
import json
import subprocess
import sys

import pytest
import XenAPI

from testbed import domains
from tests.host.test_companion import PLUGIN, run_cli, xenapi_plugin_dir  # noqa: F401
from tests.host.test_relay import relay_host_fixture  # noqa: F401 (the host fixture)
from tests.xapi_server import NULL
from xe_quiesce.host.fleet import GUEST_LISTENER, NONE, RELAY, age, xo_trigger

VM = "6f1d7e8a-1b2c-4d3e-8f90-a1b2c3d4e5f6"
OTHER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


@pytest.mark.parametrize("tags, expected", [
    ([], (NONE, None, "")),
    (["backup", "xo:notify-on-snapshot"], (GUEST_LISTENER, None, "")),
    (["xo:notify-on-snapshot=https://10.0.0.2:1727/?vm=" + VM],
     (RELAY, "https://10.0.0.2:1727/?vm=" + VM, "")),
    (["xo:notify-on-snapshot=https://[2001:db8::5]:1727"],
     (GUEST_LISTENER, "https://[2001:db8::5]:1727", "")),
    (["xo:notify-on-snapshot=https://10.0.0.2:1727/?vm=" + OTHER],
     (RELAY, "https://10.0.0.2:1727/?vm=" + OTHER,
      "the tag's relay URL names vm={}, not this VM".format(OTHER))),
    # XO reads the tags from the last one: the last XO tag is the one used
    (["xo:notify-on-snapshot=https://10.0.0.2:1727/?vm=" + VM, "xo:notify-on-snapshot"],
     (GUEST_LISTENER, None, "")),
])
def test_the_trigger_is_the_one_xo_picks(tags, expected):
    assert xo_trigger(tags, VM) == expected


@pytest.mark.parametrize("url", ["https://10.0.0.2:99999/?vm=" + VM, "10.0.0.2:1727",
                                 "ftp://10.0.0.2/"])
def test_an_unusable_tag_url_is_a_problem(url):
    trigger, _, problem = xo_trigger(["xo:notify-on-snapshot=" + url], VM)
    assert trigger == GUEST_LISTENER and problem.startswith("the tag's URL"), problem


def test_ages_in_words():
    assert [age(s) for s in (None, 5, 125, 3 * 3600 + 120, 2 * 86400 + 4 * 3600)] == [
        "?", "5s", "2m", "3h2m", "2d4h"]


def domain(host, name, domid, resident_on, tags, agent=False):
    """A running VM of the pool and its domain in the (shared) test xenstore."""
    ref = host.xapi.add_vm(name, domid=str(domid), resident_on=resident_on, tags=tags)
    record = host.xapi.db["VM"][ref]
    home, _ = domains.build_domain(host.client, domid, record["uuid"], name, [])
    if agent:
        for key, value in (("control/feature-quiesce", "1"), ("data/xe-quiesce/version", "9.9"),
                           ("data/xe-quiesce/state", "idle")):
            host.client.write("{}/{}".format(home, key), value)
    return record["uuid"]


def pool(host, other_plugin=True):
    """guest-vm (agent, relay tag) with a quiesced snapshot; on this host also an
    agentless VM tagged for its own listener and an untagged one; on the other host a
    VM with an agent and the relay tag; a halted VM, listed nowhere."""
    host.make_vm().start_guest()
    taken = run_cli(host, "snapshot", "guest-vm")
    assert taken.ok, taken.error
    host.xapi.db["VM"][host.vm]["tags"] = [
        "xo:notify-on-snapshot=https://127.0.0.1:1727/?vm=" + host.vm_uuid]
    vms = {"guest-vm": host.vm_uuid, "snapshot": taken.value,
           "listener-no-agent": domain(host, "listener-no-agent", 8, None,
                                       ["xo:notify-on-snapshot"]),
           "untagged": domain(host, "untagged", 9, None, [])}
    away = domain(host, "away", 11, host.xapi.other_host, [], agent=True)
    host.xapi.db["VM"][host.xapi.ref_of("VM", away)]["tags"] = [
        "xo:notify-on-snapshot=https://127.0.0.1:1727/?vm=" + away]
    vms["away"] = away
    host.xapi.add_vm("halted", power_state="Halted", resident_on=NULL)
    env = host.env()
    env["PYTHONPATH"] = host.plugin_dir
    host.xapi.plugin = (PLUGIN, env)
    if other_plugin:
        inventory = str(host.tmp_path / "other-inventory")
        with open(inventory, "w") as handle:
            handle.write("INSTALLATION_UUID='{}'\n".format(
                host.xapi.db["host"][host.xapi.other_host]["uuid"]))
        host.xapi.plugins[host.xapi.other_host] = (PLUGIN, dict(env,
                                                                XE_QUIESCE_INVENTORY=inventory))
    else:
        host.xapi.plugins[host.xapi.other_host] = None
    return vms


def check_all(host, *options):
    proc = subprocess.run([sys.executable, "-m", "xe_quiesce.host.cli", "check", "--all"]
                          + list(options), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=host.env(), timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_check_all_is_the_pools_coverage(host):
    vms = pool(host)
    code, out, err = check_all(host, "--json")
    assert code == 2, err  # listener-no-agent carries an XO tag and cannot be quiesced
    rows = {row["name"]: row for row in json.loads(out)["vms"]}
    assert sorted(rows) == ["away", "guest-vm", "listener-no-agent", "untagged"]
    mine = rows["guest-vm"]
    assert mine["host"] == "this-host" and mine["uuid"] == vms["guest-vm"]
    assert mine["agent"]["advertised"] is True and mine["agent"]["state"] == "idle"
    assert mine["trigger"] == RELAY and mine["problem"] == ""
    assert mine["last_quiesced"]["uuid"] == vms["snapshot"]
    assert mine["last_quiesced"]["age_seconds"] >= 0
    assert rows["listener-no-agent"]["trigger"] == GUEST_LISTENER
    assert rows["listener-no-agent"]["problem"] == (
        "the guest does not advertise control/feature-quiesce (no agent)")
    assert rows["untagged"]["trigger"] == NONE and rows["untagged"]["last_quiesced"] is None
    away = rows["away"]  # read on the other host, by its plugin
    assert away["host"] == "other-host" and away["trigger"] == RELAY
    assert away["agent"] == {"advertised": True, "version": "9.9", "state": "idle"}
    assert away["problem"] == ""

    code, out, _ = check_all(host)
    assert code == 2
    lines = {line.split()[1]: line for line in out.splitlines()}
    assert lines["guest-vm"].startswith("{} guest-vm on this-host: agent ".format(
        vms["guest-vm"]))
    assert "; XO trigger: relay; last quiesced: " in lines["guest-vm"]
    assert vms["snapshot"] in lines["guest-vm"] and "CANNOT" not in lines["guest-vm"]
    assert lines["listener-no-agent"].endswith(
        "no agent; XO trigger: guest listener; last quiesced: never; CANNOT QUIESCE: the "
        "guest does not advertise control/feature-quiesce (no agent)")
    assert lines["untagged"].endswith("no agent; XO trigger: none; last quiesced: never")
    assert lines["away"].endswith("agent 9.9 idle; XO trigger: relay; last quiesced: never")


def test_check_all_exits_0_when_every_tagged_vm_is_covered(host):
    pool(host)
    listener = host.xapi.db["VM"][host.xapi.ref_of("VM", pool_uuid(host, "listener-no-agent"))]
    listener["tags"] = []
    code, out, err = check_all(host)
    assert code == 0, out + err
    assert len(out.splitlines()) == 4


def pool_uuid(host, name):
    return [r["uuid"] for r in host.xapi.db["VM"].values() if r["name_label"] == name][0]


def test_a_host_that_cannot_answer_is_said_so(host):
    pool(host, other_plugin=False)
    code, out, _ = check_all(host, "--json")
    assert code == 2
    [away] = [row for row in json.loads(out)["vms"] if row["name"] == "away"]
    assert away["agent"]["advertised"] is None
    assert away["problem"].startswith(
        "cannot ask host other-host's xe-quiesce plugin: XENAPI_MISSING_PLUGIN")


def test_plugin_check_with_all(host):
    pool(host)
    session = XenAPI.Session(host.xapi.url)
    session.xenapi.login_with_password("root", "", "1.0", "test_relay_fleet")
    try:
        call = session.xenapi.host.call_plugin
        report = json.loads(call(host.xapi.host, "xe-quiesce", "check", {"all": "true"}))
        here = json.loads(call(host.xapi.host, "xe-quiesce", "check", {"all": "here"}))
        with pytest.raises(XenAPI.Failure) as refused:
            call(host.xapi.host, "xe-quiesce", "check", {"all": "yes"})
    finally:
        session.xenapi.session.logout()
    assert sorted(row["name"] for row in report["vms"]) == [
        "away", "guest-vm", "listener-no-agent", "untagged"]
    assert sorted(row["name"] for row in here["vms"]) == [
        "guest-vm", "listener-no-agent", "untagged"]
    assert "all must be one of true, here, not 'yes'" in " ".join(refused.value.details)


def test_check_needs_a_vm_or_all(host):
    for options in ([], ["guest-vm", "--all"]):
        proc = subprocess.run([sys.executable, "-m", "xe_quiesce.host.cli", "check"] + options,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=host.env(), timeout=60)
        assert proc.returncode == 1
        assert proc.stderr.strip() == "xe-quiesce-host: error: give a VM, or --all"
