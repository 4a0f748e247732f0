"""A host with many VMs: one xenstored, one agent per VM, all asked to quiesce at once.

Each agent is its own `xe-quiesce run` process with its own domain path (domid) and its
own small loop filesystem; the host side of each VM (xenopsd's keys, snapwatchd, XAPI's
call) is the dom0 simulator, all in this process, each with its own xenstore
connections. XAPI's calls are released together by a barrier.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .agent import AgentRig
from .filesystems import SCALE_SIZE_MB, assert_ours

START_WORKERS = 8
FIRST_DOMID = 100


def start_agents(workspace, xenstored, count):
    """`count` filesystems and agents; returns (filesystems, rigs) (partial on error)."""
    filesystems = workspace.make_set("vm", count, size_mb=SCALE_SIZE_MB, fstype="ext4")
    rigs = []
    try:
        for index, fs in enumerate(filesystems):
            rigs.append(AgentRig("agent{:03d}".format(index), workspace.path, xenstored,
                                 assert_ours([fs]), FIRST_DOMID + index))
        with ThreadPoolExecutor(START_WORKERS) as pool:
            list(pool.map(lambda rig: rig.start(), rigs))
    except BaseException:
        stop_agents(rigs)
        raise
    return filesystems, rigs


def stop_agents(rigs):
    with ThreadPoolExecutor(START_WORKERS) as pool:
        list(pool.map(lambda rig: rig.stop(), rigs))


def quiesce_all(rigs):
    """One round: every VM's snapshot_with_quiesce at the same moment; per-VM results."""
    barrier = threading.Barrier(len(rigs))
    results = [None] * len(rigs)

    def one(index, rig):
        barrier.wait()
        try:
            results[index] = dict(rig.run("xenstore"), ok=True)
        except Exception as error:  # a failed VM is a result, the round goes on
            results[index] = {"ok": False, "error": "{}: {}".format(type(error).__name__, error)}

    threads = [threading.Thread(target=one, args=(i, rig)) for i, rig in enumerate(rigs)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"seconds": time.monotonic() - started, "vms": results}
