"""Routing: served here, forwarded, or refused, in qemu-ga's order of checks (no root, fakes)."""

from __future__ import annotations

import json

from quiesce.qga.commands import FROZEN_ALLOWLIST, OWN_COMMANDS, Dispatcher
from quiesce.qga.jsonstream import Parsed
from quiesce.qga.protocol import Request


class FakeFreezer:
    """Stands in for the freezer: records calls, reports a settable state."""

    def __init__(self) -> None:
        self.frozen = False
        self.calls: list[tuple[str, object]] = []

    def status(self) -> str:
        return "frozen" if self.frozen else "thawed"

    def freeze(self, mountpoints, stopping) -> int:
        self.calls.append(("freeze", mountpoints))
        self.frozen = True
        return 3

    def thaw(self) -> int:
        self.calls.append(("thaw", None))
        self.frozen = False
        return 3


class FakeForwarder:
    """Stands in for the stock agent: two commands, one of them silent on success."""

    def __init__(self) -> None:
        self.info = {
            "version": "7.2.22",
            "supported_commands": [
                {"enabled": True, "name": "guest-get-osinfo", "success-response": True},
                {"enabled": True, "name": "guest-shutdown", "success-response": False},
                {"enabled": False, "name": "guest-fsfreeze-freeze", "success-response": True},
            ],
        }
        self.sent: list[str] = []

    def refresh(self):
        return self.info

    def knows(self, name: str) -> bool:
        return any(c["name"] == name for c in self.info["supported_commands"])

    def call(self, request: Request) -> list[bytes]:
        self.sent.append(request.name)
        return [b'{"return": {"id": "debian"}}\n']


def handle(d: Dispatcher, value: object) -> list[dict]:
    return [json.loads(r.lstrip(b"\xff")) for r in d.handle(Parsed(value=value))]


def test_allowlist_is_qemu_ga_7_2s():
    """The six commands qemu-ga accepts while frozen (qga/main.c), all served here."""
    assert (
        frozenset(
            {
                "guest-ping",
                "guest-info",
                "guest-sync",
                "guest-sync-delimited",
                "guest-fsfreeze-status",
                "guest-fsfreeze-thaw",
            }
        )
        == FROZEN_ALLOWLIST
    )
    assert OWN_COMMANDS.keys() >= FROZEN_ALLOWLIST


def test_forwarded_when_thawed_refused_when_frozen():
    """A forwarded command reaches the agent when thawed; while frozen it is disabled, never sent."""
    fz, fwd = FakeFreezer(), FakeForwarder()
    d = Dispatcher(fz, fwd)  # type: ignore[arg-type]
    assert handle(d, {"execute": "guest-get-osinfo"}) == [{"return": {"id": "debian"}}]
    fz.frozen = True
    assert handle(d, {"execute": "guest-get-osinfo", "id": 4}) == [
        {
            "id": 4,
            "error": {
                "class": "CommandNotFound",
                "desc": "Command guest-get-osinfo has been disabled: the agent is in frozen state",
            },
        }
    ]
    # A name the agent does not have is "not found", frozen or not, as in qemu-ga.
    assert (
        handle(d, {"execute": "guest-nosuch"})[0]["error"]["desc"]
        == "The command guest-nosuch has not been found"
    )
    assert fwd.sent == ["guest-get-osinfo"]


def test_without_forwarding_every_other_command_is_not_found():
    """No --forward: other commands are CommandNotFound."""
    d = Dispatcher(FakeFreezer(), None)  # type: ignore[arg-type]
    assert handle(d, {"execute": "guest-exec", "arguments": {"path": "/bin/true"}}) == [
        {"error": {"class": "CommandNotFound", "desc": "The command guest-exec has not been found"}}
    ]


def test_frozen_refusal_comes_before_argument_checks():
    """While frozen, a freeze with bad arguments is "disabled", not an argument error (qemu's order)."""
    fz = FakeFreezer()
    fz.frozen = True
    d = Dispatcher(fz, None)  # type: ignore[arg-type]
    reply = handle(d, {"execute": "guest-fsfreeze-freeze-list", "arguments": {"bogus": 1}})
    assert reply[0]["error"]["desc"].startswith("Command guest-fsfreeze-freeze-list has been disabled")
    assert fz.calls == []


def test_own_commands():
    """sync echoes, delimited adds 0xFF, ping is {}, freeze-list passes mount points, thaw counts."""
    fz = FakeFreezer()
    d = Dispatcher(fz, None)  # type: ignore[arg-type]
    assert handle(d, {"execute": "guest-sync", "arguments": {"id": 77}}) == [{"return": 77}]
    raw = d.handle(Parsed(value={"execute": "guest-sync-delimited", "arguments": {"id": 5}}))
    assert raw == [b'\xff{"return": 5}\n']
    assert handle(d, {"execute": "guest-ping"}) == [{"return": {}}]
    assert handle(d, {"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": ["/a"]}}) == [
        {"return": 3}
    ]
    assert handle(d, {"execute": "guest-fsfreeze-status"}) == [{"return": "frozen"}]
    assert handle(d, {"execute": "guest-fsfreeze-thaw"}) == [{"return": 3}]
    assert fz.calls == [("freeze", ["/a"]), ("thaw", None)]


def test_parse_errors_and_bad_requests():
    """A lexer/parser error and a non-request get GenericError replies."""
    d = Dispatcher(FakeFreezer(), None)  # type: ignore[arg-type]
    assert [json.loads(r) for r in d.handle(Parsed(error="JSON parse error, invalid keyword 'x'"))] == [
        {"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword 'x'"}}
    ]
    assert handle(d, [1]) == [{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}]


def test_a_limit_error_is_worded_as_qemu_ga_words_it():
    """Too deep a value: "JSON nesting depth limit exceeded", with no "JSON parse error, " before it."""
    from quiesce.qga.jsonstream import MAX_NESTING, JsonStream

    d = Dispatcher(FakeFreezer(), None)  # type: ignore[arg-type]
    (parsed,) = JsonStream().feed(b"[" * (MAX_NESTING + 1))
    assert [json.loads(r) for r in d.handle(parsed)] == [
        {"error": {"class": "GenericError", "desc": "JSON nesting depth limit exceeded"}}
    ]


def test_guest_info_merges_own_commands_into_the_agents():
    """guest-info: the agent's version and list, quiesce's commands enabled in their place."""
    fz, fwd = FakeFreezer(), FakeForwarder()
    d = Dispatcher(fz, fwd)  # type: ignore[arg-type]
    info = handle(d, {"execute": "guest-info"})[0]["return"]
    assert info["version"] == "7.2.22"
    by_name = {c["name"]: c for c in info["supported_commands"]}
    assert set(by_name) == {"guest-get-osinfo", "guest-shutdown", *OWN_COMMANDS}
    assert all(set(c) == {"enabled", "name", "success-response"} for c in info["supported_commands"])
    assert by_name["guest-fsfreeze-freeze"]["enabled"] is True  # blocked in the agent, served here
    assert by_name["guest-shutdown"] == {"enabled": True, "name": "guest-shutdown", "success-response": False}
    fz.frozen = True
    frozen = {
        c["name"]: c["enabled"]
        for c in handle(d, {"execute": "guest-info"})[0]["return"]["supported_commands"]
    }
    assert {n for n, on in frozen.items() if on} == FROZEN_ALLOWLIST


def test_an_id_as_deep_as_the_reader_takes_is_echoed_whole():
    """An id nested 1020 deep comes back whole, as qemu-ga sends it back (the writer has its own stack)."""
    d = Dispatcher(FakeFreezer(), None)  # type: ignore[arg-type]
    deep: object = 1
    for _ in range(1020):
        deep = [deep]
    (reply,) = d.handle(Parsed(value={"execute": "guest-ping", "id": deep}))
    assert reply == b'{"return": {}, "id": ' + b"[" * 1020 + b"1" + b"]" * 1020 + b"}\n"


def test_a_request_that_cannot_be_handled_gets_an_error_not_a_crash():
    """Whatever goes wrong inside a command, the host gets a GenericError and the agent goes on."""
    d = Dispatcher(FakeFreezer(), None)  # type: ignore[arg-type]
    reply = handle(d, {"execute": "guest-ping", "id": {"not json": object()}})
    assert reply[0]["error"]["class"] == "GenericError"
    assert handle(d, {"execute": "guest-ping"}) == [{"return": {}}]


#: (command, argument names in the order sent, the one qemu-ga 7.2 names as unexpected), recorded
#: from Debian's qemu-ga: GLib's hash table decides, across resizes, signed chars and C0 80.
UNEXPECTED_RECORDED = [
    ("guest-ping", ["a", "b", "c", "id", "mountpoints"], "b"),
    ("guest-ping", ["zz", "aa"], "aa"),
    ("guest-info", ["a", "b", "c", "id", "mountpoints"], "b"),
    ("guest-fsfreeze-status", ["zz", "aa"], "aa"),
    ("guest-sync", ["x", "id"], "x"),
    ("guest-sync-delimited", ["id", "b", "a", "zz"], "b"),
    ("guest-ping", [f"k{i}" for i in range(9)], "k6"),
    ("guest-ping", [f"k{i}" for i in range(40)], "k4"),
    ("guest-sync", ["id"] + [f"m{i}" for i in range(30)], "m15"),
    ("guest-ping", ["\u00e9", "\u20ac", "a", "\U0001f600"], "\u00e9"),
    ("guest-ping", ["\0a", "\0b", "\0c"], "\0b"),
    # Bytes past 0x7F hash as negative (signed chars): read as unsigned, these would name "b" and "é".
    ("guest-ping", ["b\u20ac", "a", "\u20ac", "b"], "b\u20ac"),
    ("guest-ping", ["b", "\u00e9", "bb"], "b"),
    ("guest-ping", [f"p{i}" for i in range(200)], "p26"),
    ("guest-fsfreeze-freeze-list", ["mountpoints", "b", "a", "zz"], "b"),
]


def test_of_several_unexpected_arguments_the_one_qemu_ga_names_is_named():
    """Several unknown arguments: the reply names the one qemu-ga 7.2 names, not the first sent."""
    fz = FakeFreezer()
    d = Dispatcher(fz, None)  # type: ignore[arg-type]
    for name, keys, named in UNEXPECTED_RECORDED:
        args: dict[str, object] = {k: 1 for k in keys}
        if "id" in keys and name.startswith("guest-sync"):
            args["id"] = 5
        if "mountpoints" in args and name == "guest-fsfreeze-freeze-list":
            args["mountpoints"] = ["/nonexistent"]
        assert handle(d, {"execute": name, "arguments": args}) == [
            {"error": {"class": "GenericError", "desc": f"Parameter '{named}' is unexpected"}}
        ], (name, keys)
    assert fz.calls == []


#: Requests with more than one fault, and qemu-ga 7.2's reply: it checks the members in its
#: hash table's order, not in the order they were sent.
BAD_MEMBERS_RECORDED = [
    ({"b": 1, "a": 2, "id": 3}, 3, "QMP input member 'a' is unexpected"),
    ({"zz": 1, "execute": "guest-ping", "aa": 2}, None, "QMP input member 'aa' is unexpected"),
    ({"arguments": [], "execute": 1}, None, "QMP input member 'execute' must be a string"),
    ({"execute": 1, "exec-oob": "x"}, None, "QMP input member 'exec-oob' is unexpected"),
    (
        {"execute": "guest-ping", "control": 1, "arguments": []},
        None,
        "QMP input member 'control' is unexpected",
    ),
    ({"arguments": 5, "id": 1, "x": 2}, 1, "QMP input member 'x' is unexpected"),
]


def test_of_several_bad_members_the_one_qemu_ga_names_is_named():
    """A request with two faulty members gets qemu-ga's error for the one its table holds first."""
    d = Dispatcher(FakeFreezer(), None)  # type: ignore[arg-type]
    for request, ident, desc in BAD_MEMBERS_RECORDED:
        want: dict[str, object] = {"error": {"class": "GenericError", "desc": desc}}
        if ident is not None:
            want = {"id": ident, **want}
        assert handle(d, request) == [want], request


def test_guest_info_alone_lists_own_commands_in_qemu_gas_order():
    """Without forwarding: quiesce's eight commands, in the order qemu-ga 7.2's guest-info has them."""
    d = Dispatcher(FakeFreezer(), None)  # type: ignore[arg-type]
    info = handle(d, {"execute": "guest-info"})[0]["return"]
    assert [c["name"] for c in info["supported_commands"]] == [
        "guest-fsfreeze-thaw",
        "guest-fsfreeze-freeze-list",
        "guest-fsfreeze-freeze",
        "guest-fsfreeze-status",
        "guest-info",
        "guest-ping",
        "guest-sync",
        "guest-sync-delimited",
    ]
    assert all(c["enabled"] and c["success-response"] for c in info["supported_commands"])
