"""`make bench` stays runnable: every benchmark code path once (N = 1, one repetition).

The full run is not part of `make test` (it takes ~20 min); this runs the same phases
with the smoke profile in well under 30 s: raw floor, fsfreeze, qemu-ga when installed
(only `make bench` installs it), every trigger of the real daemon, unsynced data, who
thaws what, the late-reaper comparison, the kernel tracepoints' view of every run, idle
measurement, two agents at scale, the report, and the plots where Debian's matplotlib
is present.
"""
import json
import os
import subprocess

import pytest

from bench.report import Report
from bench.run import TRIGGERS, Bench
from tests import REPO

SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop devices, FIFREEZE)")


def has_matplotlib():
    return subprocess.run([SYSTEM_PYTHON, "-c", "import matplotlib"],
                          stderr=subprocess.DEVNULL).returncode == 0


def test_every_bench_phase_once(tmp_path):
    out = tmp_path / "results.json"
    results = Bench("smoke", str(out)).run()

    assert results["errors"] == []
    clean = results["clean"]["1"]
    assert {"raw-seq", "raw-seq-exp", "fsfreeze", "ours-noexp"} | {
        "ours-" + t for t in TRIGGERS} <= set(clean)
    for method, samples in clean.items():
        assert len(samples) == 1 and 0 < samples[0]["window"] < 60, method
    ours = clean["ours-control"][0]
    assert ours["latency"] >= ours["freeze"] > 0 and len(ours["per_fs"]) == 1
    assert 0 < clean["ours-cli"][0]["thaw_start"] < 60
    if results["kernel_trace"]["on"]:  # the kernel's ruler saw one FIFREEZE and FITHAW each
        for method, samples in clean.items():
            seen = samples[0]["kernel"]
            assert (seen["freezes"], seen["thaws"]) == (1, 1), method
            assert 0 < seen["freeze"] <= seen["window"], method
        assert clean["ours-control"][0]["kernel"]["window"] <= ours["external_window"]
    assert {"raw-seq", "ours-control", "ours-nosync"} <= set(results["dirty"]["1"])
    assert results["isolation"]["ours"]["still_frozen"] is True
    if "qemu-ga" in results["isolation"]:
        assert results["isolation"]["qemu-ga"]["still_frozen"] is False  # as documented
    assert results["reaping"]["without_reaper"][0]["window"] > 0
    assert all(result["rss"] > 0 for result in results["idle"].values())
    assert all(vm["ok"] for vm in results["scale"]["rounds"][0]["vms"])

    page = Report(json.loads(out.read_text()), {}).render()
    assert "## Targets (issue 9)" in page and "None: every run" in page
    assert "## Targets (issue 18)" in page and "`frozen -- true` window" in page
    assert "Without the knob (`expedite-rcu = no`, not a target)" in page
    if has_matplotlib():
        subprocess.run([SYSTEM_PYTHON, "-m", "bench.plot", str(out), str(tmp_path)],
                       cwd=REPO, check=True)
        assert (tmp_path / "benchmarks-window-n1.png").stat().st_size > 1000
