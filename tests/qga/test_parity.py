"""Protocol parity: libvirt's exchanges against ``quiesce qga`` and Debian's qemu-ga 7.2, no VM.

The same client replays what libvirt sends (the ``guest-sync`` handshake with
an id, ``guest-sync-delimited`` after 0xFF, freeze-list, status, a command
refused while frozen, thaw, ``guest-info``, malformed input, an unknown
command) against ``qemu-ga -m unix-listen`` and against ``quiesce qga
--unix-listen``, on the same loop filesystems in this process's private
mount namespace, and the replies must be the same: byte for byte where
qemu-ga's reply is deterministic, and in shape and error class for
``guest-info``. qemu-ga only ever gets a freeze-list naming the loop
mounts; the plain freeze goes to quiesce alone, whose config targets them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.qga.agents import QEMU_GA, Client, mkdir, qemu_ga, quiesce_qga, reap, writer_blocked

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.access(QEMU_GA, os.X_OK), reason="qemu-guest-agent is not installed"),
]

#: What the forwarded-to agent never does: freezing is quiesce's, and nothing may stop this machine.
FORWARD_BLOCK = (
    "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list",
    "guest-fsfreeze-thaw",
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
)


def exchange(c: Client, a: str, b: str) -> list[tuple[str, list[bytes]]]:
    """libvirt's conversation, step by step: (label, raw reply lines)."""
    steps: list[tuple[str, bytes, int]] = [
        ("sync", b'{"execute":"guest-sync", "arguments":{"id":1733030000123}}\n', 1),
        ("sync-delimited", b'\xff{"execute":"guest-sync-delimited", "arguments":{"id":42}}\n', 2),
        ("status-thawed", b'{"execute":"guest-fsfreeze-status"}\n', 1),
        (
            "freeze-list",
            json.dumps(
                {"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [a, b]}}
            ).encode()
            + b"\n",
            1,
        ),
        ("status-frozen", b'{"execute":"guest-fsfreeze-status"}\n', 1),
        ("disabled-while-frozen", b'{"execute":"guest-get-osinfo","id":"x1"}\n', 1),
        (
            "freeze-again",
            json.dumps({"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [a]}}).encode()
            + b"\n",
            1,
        ),
        ("ping-while-frozen", b'{"execute":"guest-ping","id":7}\n', 1),
        # While frozen, qemu's order: not found, then disabled, then the arguments.
        ("disabled-bad-args", b'{"execute":"guest-get-osinfo","arguments":{"x":1}}\n', 1),
        (
            "disabled-list-bad-args",
            b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":5}}\n',
            1,
        ),
        ("nosuch-while-frozen", b'{"execute":"guest-nosuch","arguments":[]}\n', 1),
        ("bad-member-while-frozen", b'{"execute":"guest-get-osinfo","x":1,"id":2}\n', 1),
        ("sync-bad-id-while-frozen", b'{"execute":"guest-sync","arguments":{"id":1.5}}\n', 1),
        ("info-extra-while-frozen", b'{"execute":"guest-info","arguments":{"b":1,"a":2,"zz":3}}\n', 1),
        ("thaw-extra-while-frozen", b'{"execute":"guest-fsfreeze-thaw","arguments":{"zz":1,"aa":2}}\n', 1),
        ("status-still-frozen", b'{"execute":"guest-fsfreeze-status","arguments":{}}\n', 1),
        ("malformed", b"garbage\n", 1),
        ("malformed-object", b'{"execute": }\n', 1),
        ("unknown", b'{"execute":"guest-nosuch"}\n', 1),
        ("thaw", b'{"execute":"guest-fsfreeze-thaw"}\n', 1),
        ("status-after", b'{"execute":"guest-fsfreeze-status"}\n', 1),
        ("thaw-again", b'{"execute":"guest-fsfreeze-thaw"}\n', 1),
        (
            "freeze-nothing",
            b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":["/nonexistent"]}}\n',
            1,
        ),
        ("status-nothing", b'{"execute":"guest-fsfreeze-status"}\n', 1),
        ("sync-bad-id", b'{"execute":"guest-sync","arguments":{"id":"x"}}\n', 1),
        ("sync-no-id", b'{"execute":"guest-sync","id":5}\n', 1),
        ("ping-extra", b'{"execute":"guest-ping","arguments":{"a":1}}\n', 1),
        ("not-object", b"[1,2]\n", 1),
        ("no-execute", b'{"id":1}\n', 1),
        ("bad-member", b'{"execute":"guest-ping","control":{}}\n', 1),
        ("single-quotes", b"{'execute':'guest-ping'}\n", 1),
        ("list-type", b'{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[1]}}\n', 1),
        # Deeper than qemu's nesting limit: a limit's error (worded without "JSON parse error").
        ("too-deep", b"[" * 1025 + b"\n", 1),
        ("after-too-deep", b'\xff{"execute":"guest-sync-delimited", "arguments":{"id":43}}\n', 2),
    ]
    out = []
    for label, raw, lines in steps:
        c.send(raw)
        out.append((label, [c.line() for _ in range(lines)]))
    return out


def info_of(c: Client) -> dict:
    """guest-info's reply."""
    return c.cmd("guest-info")


def check_info_shape(info: dict) -> dict[str, bool]:
    """guest-info has qemu-ga's shape; returns name -> enabled."""
    ret = info["return"]
    assert set(ret) == {"version", "supported_commands"} and isinstance(ret["version"], str)
    for cmd in ret["supported_commands"]:
        assert set(cmd) == {"enabled", "name", "success-response"}
        assert isinstance(cmd["enabled"], bool) and isinstance(cmd["success-response"], bool)
    return {cmd["name"]: cmd["enabled"] for cmd in ret["supported_commands"]}


def test_libvirt_exchange_replies_match_qemu_ga(node, lfs):
    """Every reply of libvirt's conversation is byte-identical; guest-info matches in shape and flags."""
    a, b = str(lfs["a"].mount_point), str(lfs["b"].mount_point)
    work = mkdir(Path(node.base) / "agents")
    node.config([a, b])

    with qemu_ga(mkdir(work / "stock")) as stock, stock.client() as c:
        stock_info = info_of(c)
        expected = exchange(c, a, b)
        c.send(
            json.dumps({"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [a]}}) + "\n"
        )
        assert json.loads(c.line()) == {"return": 1}
        stock_frozen_info = info_of(c)
        assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}

    with (
        qemu_ga(mkdir(work / "forward"), block=FORWARD_BLOCK) as fwd,
        quiesce_qga(work, node.run_dir, config=node.config_path, forward=fwd.sock) as q,
        q.client() as c,
    ):
        ours_info = info_of(c)
        got = exchange(c, a, b)
        c.send(
            json.dumps({"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": [a]}}) + "\n"
        )
        assert json.loads(c.line()) == {"return": 1}
        ours_frozen_info = info_of(c)
        assert c.cmd("guest-fsfreeze-thaw") == {"return": 1}

    for (label, want), (_, have) in zip(expected, got, strict=True):
        assert (label, have) == (label, want)

    stock_flags, our_flags = check_info_shape(stock_info), check_info_shape(ours_info)
    assert ours_info["return"]["version"] == stock_info["return"]["version"]
    assert set(our_flags) == set(stock_flags)
    # The forwarded agent blocks what must not run on this machine; the rest agrees.
    assert {n: e for n, e in our_flags.items() if n not in FORWARD_BLOCK[3:]} == {
        n: e for n, e in stock_flags.items() if n not in FORWARD_BLOCK[3:]
    }
    assert check_info_shape(ours_frozen_info) == check_info_shape(stock_frozen_info)


def test_plain_freeze_and_freeze_list_without_mountpoints_follow_the_config(node, lfs):
    """Without mount points (libvirt's plain domfsfreeze), quiesce freezes its config's targets only."""
    a, b, c_ = (lfs[n] for n in ("a", "b", "c"))
    work = mkdir(Path(node.base) / "agents")
    node.config([str(a.mount_point), str(b.mount_point)])
    with (
        quiesce_qga(work, node.run_dir, config=node.config_path) as q,
        q.client(whole_freeze_ok=True) as c,
    ):
        try:
            for request in ({"execute": "guest-fsfreeze-freeze"}, {"execute": "guest-fsfreeze-freeze-list"}):
                c.send(json.dumps(request) + "\n")
                assert c.reply() == {"return": 2}
                assert writer_blocked(a.mount_point / "probe") and writer_blocked(b.mount_point / "probe")
                assert not writer_blocked(c_.mount_point / "probe")
                assert c.cmd("guest-fsfreeze-thaw") == {"return": 2}
                reap()
        finally:
            reap()


#: Replayed after each input: the reply to it marks the end of the input's replies (0xFF resyncs first).
_END = b'\n\xff{"execute":"guest-sync-delimited","arguments":{"id":987654}}\n'
#: Inputs where the JSON reader and writer must answer as qemu-ga 7.2's (none can freeze anything).
HOSTILE = [
    b'{"execute":"guest-ping","id":{"a":1,"b":2,"c":3,"zz":4,"id":5,"return":6}}',
    b'{"id":{"b":1,"a":2}, "execute":"guest-nosuch"}',
    b'{"execute":"guest-ping","id":' + b"[" * 1023 + b"]" * 1023 + b"}",
    b'{"execute":"guest-ping","id":[0.1, 1E5, -0.0, 1e400, -1e400, 2.5e-324, 123456789.123456789]}',
    b'{"execute":"guest-ping","id":[18446744073709551615, 18446744073709551616, -9223372036854775809]}',
    b'{"execute":"guest-ping","id":["\\ud83d\\ude00", "a\xc0\x80b", "\\u0000", "\xe2\x82\xac"]}',
    b'{"execute":"guest-ping","id":"\\ud83d"}',
    b'{"execute":"guest-ping","id":"\\ude00\\ud83d"}',
    b'{"execute":"guest-ping","id":"\\u12"}',
    b"{'execute':'guest-ping','id':'\\u12zz'}",
    b'{"execute":"guest-ping","id":00012}',
    b'{"execute":"guest-ping","id":0e5}',
    b'{"execute":"guest-ping","id":0.5e1}',
    b'{"a":1,}',
    b"{,}",
    b'{"execute":"guest-ping","id":{[1]:1}}',
    b'{"execute":"guest-ping","id":{{"a":}:1}}',
    b'{"execute":"guest-ping","id":{true:1}}',
    b'{"execute":"guest-ping","id":{foo:1}}',
    b"ab\x00cd",
    b"'x\\",
    b'-u"arguments"true:xe',
    b'.true:"guest-sync"',
    b"[" * 1025,
]
_PIECES = [b"{", b"}", b"[", b"]", b'"', b"'", b":", b",", b'"execute"', b'"guest-ping"', b'"id"']
_PIECES += [b"0", b"00", b"1.5", b"-", b"e", b"E5", b"true", b"nul", b" ", b"\\", b"\\u", b"\\ud800"]
_PIECES += [b"\xff", b"\x01", b"\n", b"\xc0\x80", b"\x00", b"\xe2\x82\xac", b"x", b'{"id":1}']


def _replies(sock_path: str, data: bytes) -> bytes:
    """Everything the agent answers to ``data``, up to its answer to :data:`_END`."""
    import socket
    import time

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(data + _END)
        out = b""
        deadline = time.monotonic() + 10
        while b'{"return": 987654}' not in out and time.monotonic() < deadline:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            out += chunk
        return out


def test_hostile_json_gets_the_same_bytes_as_from_qemu_ga(node, lfs):
    """Malformed and odd JSON, fixed and random (seeded): every reply byte-identical to qemu-ga's.

    Covers the lexer's recovery points, its error tokens (NUL-ended, modified UTF-8), the
    parser's first error, surrogates, integers past 64 bits, and the writer's member order
    (qemu's hash table), doubles (``%.17g``) and depth.
    """
    import random

    rnd = random.Random(20261202)
    cases = HOSTILE + [b"".join(rnd.choice(_PIECES) for _ in range(rnd.randint(1, 12))) for _ in range(300)]
    work = mkdir(Path(node.base) / "agents")
    with qemu_ga(mkdir(work / "stock"), block=FORWARD_BLOCK) as stock:
        stock.client().close()  # listening
        want = [_replies(stock.sock, case) for case in cases]
    with quiesce_qga(work, node.run_dir) as q:
        q.client().close()
        have = [_replies(q.sock, case) for case in cases]
    assert all(w.endswith(b'\xff{"return": 987654}\n') for w in want)  # every exchange ran to its end
    assert [(c, h) for c, h, w in zip(cases, have, want, strict=True) if h != w] == []
