"""A XAPI guest's home in xenstore, as xenopsd/XAPI lay it out, for the testbed's dom0.

The product's dom0 companion only ever recreates `/vss/<uuid>` and `D/vss`
(xe_quiesce/host/xenopsd.py); the rest of a home (domid, vm, guest-owned
control/data/..., the VBD frontend and backend nodes with `sm-data/vdi-uuid`) is built
here, for the simulator and the host tests.
"""
import collections
import uuid

from xe_quiesce.host.xenopsd import ensure_vss, vss_path

# Nodes xenopsd makes guest-owned in the domain's home (guest-tools doc section 2.6).
GUEST_WRITABLE = ("device", "error", "drivers", "control", "attr", "data", "messages",
                  "vm-data")

Vbd = collections.namedtuple("Vbd", "devid vdi_uuid device_type")


def build_domain(client, domid, vm_uuid, name, vbds):
    """A guest's home as xenopsd/XAPI lay it out; returns (domain path, V)."""
    home = client.get_domain_path(domid)
    guest_owned, dom0_owned = ["n{}".format(domid)], ["n0", "r{}".format(domid)]
    client.rm(home)
    client.mkdir(home)
    client.set_perms(home, dom0_owned)
    for key, value in (("domid", str(domid)), ("vm", "/vm/" + vm_uuid), ("name", name),
                       ("unique-domain-id", str(uuid.uuid4()))):
        client.write("{}/{}".format(home, key), value)  # inherits the home's perms
    for node in GUEST_WRITABLE:
        client.mkdir("{}/{}".format(home, node))
        client.set_perms("{}/{}".format(home, node), guest_owned)
    for vbd in vbds:
        plug_vbd(client, home, domid, vbd)
    client.rm(vss_path(vm_uuid))  # xenopsd recreated V at every domain build
    return home, ensure_vss(client, home, domid, vm_uuid)


def backend_path(domid, devid):
    return "/local/domain/0/backend/vbd3/{}/{}".format(domid, devid)


def plug_vbd(client, home, domid, vbd):
    """Frontend `D/device/vbd/<devid>` (guest-owned, backend may read) and its backend
    (dom0-owned, guest may read) with `sm-data/vdi-uuid` for a VDI-backed VBD."""
    frontend = "{}/device/vbd/{}".format(home, vbd.devid)
    backend = backend_path(domid, vbd.devid)
    backend_keys = [("frontend", frontend), ("frontend-id", str(domid)), ("state", "4"),
                    ("mode", "r" if vbd.device_type == "cdrom" else "w"),
                    ("device-type", vbd.device_type), ("type", "vbd3")]
    if vbd.vdi_uuid:
        backend_keys.append(("sm-data/vdi-uuid", vbd.vdi_uuid))
    client.mkdir(backend)
    client.set_perms(backend, ["n0", "r{}".format(domid)])
    for key, value in backend_keys:
        client.write("{}/{}".format(backend, key), value)
    client.mkdir(frontend)
    client.set_perms(frontend, ["n{}".format(domid), "r0"])
    for key, value in (("backend", backend), ("backend-id", "0"), ("state", "4"),
                       ("virtual-device", str(vbd.devid)), ("device-type", vbd.device_type)):
        client.write("{}/{}".format(frontend, key), value)
