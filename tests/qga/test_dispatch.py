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
