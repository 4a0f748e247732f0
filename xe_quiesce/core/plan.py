"""The freeze plan: which superblocks, and which must be frozen before which.

It is a dependency graph rather than a list because each FIFREEZE costs tens of
milliseconds of kernel work: filesystems with no ordering relation between them are
frozen concurrently, so the frozen window does not grow with their number.

Two relations order a pair (the first is frozen before the second, thawed after it):
- a filesystem mounted inside another (children before parents, as every freezer does);
- a filesystem whose loop device's image file lives on another: freezing the image's
  filesystem first would leave the loop filesystem unable to flush its own freeze.
"""
import collections
import os

from ..linux.mountinfo import devno_of

Edge = collections.namedtuple("Edge", "first then reason")


class FreezePlan(object):
    """Planned filesystems in a valid freeze order, the edges, and the skipped mounts."""

    def __init__(self, filesystems, edges, skipped, cycles=()):
        self.edges = edges
        self.skipped = skipped
        self.cycles = tuple(cycles)
        self.filesystems = _topological(filesystems, edges)
        self.prerequisites = {fs.devno: set() for fs in self.filesystems}
        for edge in edges:
            self.prerequisites[edge.then].add(edge.first)

    def __len__(self):
        return len(self.filesystems)

    def to_dict(self):
        return {
            "filesystems": [
                {
                    "mount_point": fs.mount_point,
                    "mount_points": list(fs.mount_points),
                    "devno": fs.devno,
                    "fstype": fs.fstype,
                    "source": fs.source,
                    "stack": fs.stack,
                    "disks": list(fs.disks),
                    "vbds": list(fs.vbds),
                    "freeze_after": sorted(self.prerequisites[fs.devno]),
                }
                for fs in self.filesystems
            ],
            "order": [
                {"first": edge.first, "then": edge.then, "reason": edge.reason}
                for edge in self.edges
            ],
            "skipped": [
                {"mount_point": skip.mount_point, "fstype": skip.fstype, "reason": skip.reason}
                for skip in self.skipped
            ],
        }


def _topological(filesystems, edges):
    """Kahn's order, ties kept in mount-table order so the plan reads predictably."""
    pending = {fs.devno: set() for fs in filesystems}
    for edge in edges:
        pending[edge.then].add(edge.first)
    ordered = []
    remaining = list(filesystems)
    while remaining:
        ready = [fs for fs in remaining if not pending[fs.devno]]
        if not ready:  # only possible with a cycle, which build_plan already broke
            ready = remaining[:1]
        for fs in ready:
            ordered.append(fs)
            remaining.remove(fs)
            for prerequisites in pending.values():
                prerequisites.discard(fs.devno)
    return ordered


def _containing_mount(path, mounts):
    """The mount whose mount point is the longest prefix of `path`."""
    best = None
    for entry in mounts:
        point = entry.mount_point.rstrip("/") or "/"
        inside = path == point or path.startswith(point if point == "/" else point + "/")
        if inside and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = entry
    return best


def _stack_devices(device):
    stack = [device]
    for lower in device.lower:
        stack.extend(_stack_devices(lower))
    return stack


def _nesting_edges(filesystems, mounts):
    planned = {fs.devno for fs in filesystems}
    by_id = {entry.mount_id: entry for entry in mounts}
    edges = []
    # Mounts of a whole filesystem first, bind mounts of subfolders after: when a bind
    # mount closes a cycle, its edge is the one _break_cycles drops.
    pairs = [(fs, entry) for fs in filesystems for entry in fs.entries]
    pairs.sort(key=lambda pair: pair[1].root != "/")
    for fs, entry in pairs:
        seen = set()
        parent = by_id.get(entry.parent_id)
        while parent is not None and parent.mount_id not in seen:
            seen.add(parent.mount_id)
            devno = devno_of(parent.major, parent.minor)
            if devno in planned and devno != fs.devno:
                edges.append(Edge(fs.devno, devno, "{} is mounted inside {}".format(
                    entry.mount_point, parent.mount_point)))
                break
            parent = by_id.get(parent.parent_id)
    return edges


def _loop_edges(filesystems, mounts, topology):
    planned = {fs.devno for fs in filesystems}
    edges = []
    for fs in filesystems:
        for top in fs.devices:
            for device in _stack_devices(top):
                backing = topology.loop_backing_file(device)
                if not backing:
                    continue
                holder = _containing_mount(os.path.normpath(backing), mounts)
                if holder is None:
                    continue
                devno = devno_of(holder.major, holder.minor)
                if devno in planned and devno != fs.devno:
                    edges.append(Edge(fs.devno, devno, "{}'s image {} lives on {}".format(
                        fs.mount_point, backing, holder.mount_point)))
    return edges


def _break_cycles(filesystems, edges):
    """Drop edges that would close a cycle (bind mounts can make one); report them."""
    kept, dropped, pairs = [], [], set()
    reach = {fs.devno: {fs.devno} for fs in filesystems}  # node -> nodes frozen after it
    for edge in edges:
        if (edge.first, edge.then) in pairs:
            continue
        if edge.first in reach[edge.then]:
            dropped.append(edge)
            continue
        kept.append(edge)
        pairs.add((edge.first, edge.then))
        for reachable in reach.values():
            if edge.first in reachable:
                reachable.update(reach[edge.then])
    return kept, dropped


def build_plan(discovery, topology):
    filesystems = discovery.filesystems
    edges = _nesting_edges(filesystems, discovery.mounts) + _loop_edges(
        filesystems, discovery.mounts, topology)
    edges, cycles = _break_cycles(filesystems, edges)
    return FreezePlan(filesystems, edges, discovery.skipped, cycles)
