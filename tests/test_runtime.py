"""Idle-core counting: this process's own load is not counted against it."""

from __future__ import annotations

import os

import pytest

from chanstat import runtime


def test_others_busy_cores_subtracts_this_process():
    # 2 cores, 1 s: 150 of 200 ticks busy = 1.5 cores, of which this process used 1.0 s
    assert runtime.others_busy_cores((1000, 5000), (1150, 5200), 1.0, 1.0, 2) == pytest.approx(0.5)
    # this process alone kept the machine busy: nobody else is
    assert runtime.others_busy_cores((0, 0), (100, 200), 1.0, 1.0, 2) == 0.0
    assert runtime.others_busy_cores((0, 0), (0, 0), 0.0, 1.0, 2) == 0.0


@pytest.mark.parametrize(
    ("load", "others", "expected"),
    [
        (1.9, 0.0, 2),  # the load is our own (e.g. after training): both cores are ours
        (1.9, None, 1),  # no /proc/stat: the load average decides
        (1.9, 1.8, 1),  # someone else keeps a core busy
        (8.0, 2.0, 1),  # overloaded: never fewer than one
        (0.2, 1.5, 2),  # a burst in the sample does not outweigh an idle minute
    ],
)
def test_available_cores_counts_only_other_processes(monkeypatch, load, others, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime, "_sample_others_busy", lambda seconds: others)
    assert runtime.available_cores() == expected
    assert runtime.available_cores(idle_only=False) == 2


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat on this platform")
def test_cpu_counters_read_this_machine():
    counters = runtime._cpu_counters()
    assert counters is not None and 0 <= counters[0] <= counters[1]
