"""A fleet node asks etcd whether it answers only after a silence (no etcd: the probe is a stand-in)."""

from __future__ import annotations

import threading
import time

import pytest

from quiesce.fleet import noderun
from quiesce.fleet.protocol import Keys, RunSpec

pytestmark = pytest.mark.timeout(30)


class _Probe:
    def __init__(self, answers: bool = True) -> None:
        self.calls = 0
        self.answers = answers

    def __call__(self) -> bool:
        self.calls += 1
        return self.answers


class _QuietWatch:
    def get(self, timeout_s: float | None) -> None:
        time.sleep(min(timeout_s or 0, 0.01))


def _node(probe: _Probe) -> noderun.NodeRun:
    spec = RunSpec(("n1",))
    return noderun.NodeRun(None, Keys("g"), "n1", "r1", spec, _QuietWatch(), probe, lambda ev: None)  # type: ignore[arg-type]


def _run_probe(node: noderun.NodeRun, seconds: float, heard_every: float | None) -> None:
    thread = threading.Thread(target=node._probe_loop, daemon=True)
    thread.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end and not node._probe_failed.is_set():
        if heard_every is not None:
            node._heard_at = time.monotonic()  # what an event or a report's answer does
        time.sleep(heard_every or 0.02)
    node._probe_stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_no_probe_while_etcd_keeps_answering():
    probe = _Probe()
    node = _node(probe)
    _run_probe(node, 4 * noderun.PROBE_INTERVAL_S, heard_every=noderun.PROBE_INTERVAL_S / 5)
    assert probe.calls == 0


def test_a_silence_is_probed_every_interval():
    probe = _Probe()
    node = _node(probe)
    _run_probe(node, 4.5 * noderun.PROBE_INTERVAL_S, heard_every=None)
    assert 3 <= probe.calls <= 5
    assert not node._probe_failed.is_set()


def test_two_failed_probes_end_the_wait():
    probe = _Probe(answers=False)
    node = _node(probe)
    _run_probe(node, 10 * noderun.PROBE_INTERVAL_S, heard_every=None)
    assert node._probe_failed.is_set() and probe.calls == 2
    assert node.wait_for("thaw", time.monotonic_ns() + 10**9) == noderun.ETCD_LOST
