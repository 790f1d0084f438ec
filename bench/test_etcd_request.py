"""etcd_request.py's throwaway etcd: distinct ports, and a start that survives a port taken meanwhile."""

from __future__ import annotations

import shutil
import socket
import tempfile

import etcd_request
import pytest


def test_the_two_ports_are_never_the_same():
    """Chosen one after the other, the kernel could hand the client's port out again as the peer's."""
    for _ in range(200):
        client, peer = etcd_request._free_ports(2)
        assert client != peer


@pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (Debian's etcd-server)")
def test_a_port_taken_before_etcd_binds_it_is_tried_again(monkeypatch):
    """The first pair's client port is taken by someone else: etcd fails, the next pair serves."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    pairs = [[taken.getsockname()[1], etcd_request._free_ports(1)[0]]]
    real = etcd_request._free_ports
    monkeypatch.setattr(etcd_request, "_free_ports", lambda n: pairs.pop() if pairs else real(n))
    data = tempfile.mkdtemp(prefix="quiesce-bench-etcd-test-")
    try:
        proc, url = etcd_request._start_etcd(data)
        try:
            assert not pairs and url != f"http://127.0.0.1:{taken.getsockname()[1]}"
            assert etcd_request._answers(int(url.rsplit(":", 1)[1]))
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        taken.close()
        shutil.rmtree(data, ignore_errors=True)
