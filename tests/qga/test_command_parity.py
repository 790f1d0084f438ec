"""Command-level parity: each command's argument checks and errors, byte for byte as Debian's qemu-ga 7.2.

For every command ``quiesce qga`` serves (and a name nobody has), the same
requests go to ``qemu-ga -m unix-listen`` and to ``quiesce qga --unix-listen``:
a missing argument, unknown ones (several: which one is named), each argument
of every JSON type (string, integers at and past 64 bits, doubles, booleans,
null, lists, objects), ``arguments`` and ``execute`` of the wrong type,
``exec-oob``, odd command names, an ``id`` of every type, and seeded random
mixes of these. Safety: ``guest-fsfreeze-freeze`` is never sent, and
``guest-fsfreeze-freeze-list`` always carries ``mountpoints``, either of a
wrong type or naming only paths that do not exist.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from tests.qga.agents import QEMU_GA, mkdir, qemu_ga, quiesce_qga
from tests.qga.test_parity import FORWARD_BLOCK, _replies

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not os.access(QEMU_GA, os.X_OK), reason="qemu-guest-agent is not installed"),
]

#: A value of each JSON type, the integers at and past int64's ends, doubles that look like integers.
VALUES = ['"s"', '""', "1", "-1", "0", "1.5", "1.0", "-0.0", "1e5", "1e400", "true", "false", "null"]
VALUES += ["[]", '["a"]', "[1]", "{}", '{"a":1}', '{"b":1,"a":2}']
VALUES += ["9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809"]
VALUES += ["18446744073709551615", "18446744073709551616"]
#: A freeze-list target that does not exist: nothing is frozen, by either agent.
NOWHERE = '"/nonexistent-quiesce-qga-test"'
OWN = ["guest-sync", "guest-sync-delimited", "guest-ping", "guest-info", "guest-fsfreeze-status"]
OWN += ["guest-fsfreeze-thaw", "guest-fsfreeze-freeze-list"]
#: What must never reach an agent that could act on it.
UNSAFE = ('"guest-fsfreeze-freeze"',)


def _request(members: list[tuple[str, str]]) -> bytes:
    return ("{" + ",".join(f'"{k}":{v}' for k, v in members) + "}").encode()


def fixed_cases() -> list[bytes]:
    """Every argument fault of every served command, and the request-level faults."""
    out: list[str] = []
    for v in VALUES:
        for c in ("guest-sync", "guest-sync-delimited"):
            out.append(f'{{"execute":"{c}","arguments":{{"id":{v}}}}}')
        if v != "[]":  # an empty list is no error: only faults and paths that do not exist are sent
            out.append(f'{{"execute":"guest-fsfreeze-freeze-list","arguments":{{"mountpoints":{v}}}}}')
        out.append(
            f'{{"execute":"guest-fsfreeze-freeze-list","arguments":{{"mountpoints":[{NOWHERE},{v}]}}}}'
        )
        out += [f'{{"execute":{v}}}', f'{{"execute":"guest-ping","arguments":{v}}}', f'{{"exec-oob":{v}}}']
        out += [f'{{"execute":"guest-nosuch","arguments":{v}}}', f'{{"execute":"guest-ping","exec-oob":{v}}}']
        out += [f'{{"execute":"guest-nosuch","id":{v}}}', f'{{"execute":"guest-ping","id":{v}}}']
        out += [f'{{"execute":"guest-sync","arguments":{{"id":5}},"id":{v}}}', f'{{"execute":5,"id":{v}}}']
        out += [f'{{"execute":"guest-ping","arguments":{{"a":1}},"id":{v}}}', f'{{"id":{v}}}']
    for c in OWN:
        first = f'"mountpoints":[{NOWHERE}],' if c == "guest-fsfreeze-freeze-list" else ""
        if c.startswith("guest-sync"):
            out += [f'{{"execute":"{c}"}}', f'{{"execute":"{c}","arguments":{{}}}}']
            first = '"id":1,'
        for extra in ('"x":1', '"b":1,"a":2,"zz":3', '"a":1,"b":2,"c":3,"id4":4,"mountpoints2":5', '"ID":1'):
            out.append(f'{{"execute":"{c}","arguments":{{{first}{extra}}}}}')
        out += [f'{{"execute":"{c}","arguments":[]}}', f'{{"execute":"{c}","id":1,"x":2}}']
    out += [
        '{"execute":""}',
        '{"execute":" guest-ping"}',
        '{"execute":"GUEST-PING"}',
        '{"execute":"guest_ping"}',
        '{"execute":"guest-ping\\u0000x"}',
        '{"execute":"\\ud83d\\ude00%s%n"}',
        '{"execute":"guest-ping","execute":"guest-info"}',
        '{"exec-oob":"guest-ping","execute":"guest-ping"}',
        '{"arguments":[],"execute":1}',
        '{"execute":1,"exec-oob":"x"}',
        '{"b":1,"a":2,"id":3}',
        '{"zz":1,"execute":"guest-ping","aa":2}',
        '{"execute":"guest-ping","arguments":{"\\u0000a":1,"\\u0000b":2,"\\u00e9":3}}',
        '{"execute":"guest-ping","id":{"\\u0000":1,"a":2,"x\\u0000y":3,"\\u00e9":4}}',
        "{}",
        '{"arguments":{}}',
    ]
    return [s.encode() for s in out]


def random_cases(seed: int, n: int) -> list[bytes]:
    """Seeded mixes: several faults in one request, many unknown arguments, odd ids."""
    rnd = random.Random(seed)
    names = [*OWN, "guest-nosuch", ""]

    def value(depth: int = 0) -> str:
        r = rnd.random()
        if depth < 2 and r < 0.15:
            return "[" + ",".join(value(depth + 1) for _ in range(rnd.randint(0, 3))) + "]"
        if depth < 2 and r < 0.3:
            keys = rnd.sample(["a", "b", "id", "x", "zz", "\\u00e9"], rnd.randint(0, 3))
            return "{" + ",".join(f'"{k}":{value(depth + 1)}' for k in keys) + "}"
        return rnd.choice(VALUES)

    def arguments(name: str) -> str:
        members: list[tuple[str, str]] = []
        if name.startswith("guest-sync") and rnd.random() < 0.8:
            members.append(("id", value()))
        if name == "guest-fsfreeze-freeze-list":
            wrong = ["5", '"x"', "null", "{}", "true", "[null]", "[[]]", f"[{NOWHERE},1]"]
            members.append(("mountpoints", rnd.choice([*wrong, f"[{NOWHERE}]"])))
        for _ in range(rnd.choice([0, 0, 1, 2, 5, 12, 40])):
            members.append(("".join(rnd.choice("abkz-_") for _ in range(rnd.randint(1, 4))), value()))
        rnd.shuffle(members)
        return _request(members).decode()

    out = []
    while len(out) < n:
        name = rnd.choice(names)
        members = [("execute", json.dumps(name) if rnd.random() < 0.9 else value())]
        if name == "guest-fsfreeze-freeze-list" or rnd.random() < 0.8:
            members.append(("arguments", arguments(name) if rnd.random() < 0.9 else value()))
        if rnd.random() < 0.5:
            members.append(("id", value()))
        if rnd.random() < 0.15:
            members.append(("exec-oob", json.dumps(rnd.choice(names))))
        for _ in range(rnd.choice([0, 0, 0, 1, 3])):
            members.append((rnd.choice(["control", "x", "Execute", "ID"]), value()))
        rnd.shuffle(members)
        req = _request(members)
        if name == "guest-fsfreeze-freeze-list" and b'"mountpoints"' not in req:
            continue  # a freeze-list without mount points could freeze this machine under qemu-ga
        out.append(req)
    return out


def _is_info(reply: bytes) -> bool:
    return reply.startswith(b'{"return": {"version": ')


def test_served_commands_check_arguments_as_qemu_ga_does(node, lfs):
    """Every fault in a request to a served command gets qemu-ga 7.2's reply, byte for byte."""
    cases = fixed_cases() + random_cases(20261202, 400)
    assert not [c for c in cases if any(u.encode() in c for u in UNSAFE) or b'"mountpoints":[]' in c]
    work = mkdir(Path(node.base) / "agents")
    # freeze-list and thaw are allowed here: never without mount points, and those never exist.
    with qemu_ga(mkdir(work / "stock"), block=("guest-fsfreeze-freeze", *FORWARD_BLOCK[3:])) as stock:
        stock.client().close()
        want = [_replies(stock.sock, case) for case in cases]
    with quiesce_qga(work, node.run_dir) as q:
        q.client().close()
        have = [_replies(q.sock, case) for case in cases]
    assert all(w.endswith(b'\xff{"return": 987654}\n') for w in want)
    # guest-info's list is the agent's own (compared in test_parity); everything else is the same bytes.
    differ = [(c, h, w) for c, h, w in zip(cases, have, want, strict=True) if h != w]
    assert [(c, h) for c, h, w in differ if not (_is_info(h) and _is_info(w))] == []
