"""What old xenopsd created for a guest's quiesce, with XAPI's permissions (contract 0.1-0.4).

Current hosts no longer create `/vss/<uuid>` nor `D/vss` (xenopsd 0.129.0 removed
them), so the dom0 companion recreates them when missing. The rest of a XAPI guest's
home, which only the tests build, is testbed/domains.py's.

Permission lists are xenstored's: the first entry is the owner (which may do
anything), then `r<domid>`/`w<domid>`/`b<domid>` grants; `n<domid>` as the first
entry also sets what everyone else may do (nothing).
"""
def vss_path(vm_uuid):
    return "/vss/" + vm_uuid


def ensure_vss(client, domain_path, domid, vm_uuid):
    """`/vss/<uuid>` owned by the guest and `D/vss` pointing at it; returns V.

    Only what is missing is created, so a V in use is never pulled away (xenopsd, which
    removed and recreated V at every domain build, is the testbed's testbed/domains.py).
    """
    vss = vss_path(vm_uuid)
    if not client.exists(vss):
        client.mkdir(vss)
        client.set_perms(vss, ["n{}".format(domid)])
    if client.read_or(domain_path + "/vss") != vss:
        client.write(domain_path + "/vss", vss)
    return vss
