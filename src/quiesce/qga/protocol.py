"""QMP over the guest-agent channel: requests, replies and errors shaped as qemu-ga shapes them.

A request is a JSON object with ``execute`` (a string), optional
``arguments`` (an object) and optional ``id`` (any value, echoed back). A
reply is ``{"return": R, "id": ID}`` or ``{"id": ID, "error": {"class": C,
"desc": D}}``, one per line; ``guest-sync-delimited``'s reply is preceded
by a 0xFF byte. The texts and classes below are qemu-ga 7.2's, checked
against Debian's ``qemu-guest-agent`` (tests/qga/test_parity.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from quiesce.qga import ghash, qjson

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
#: The byte qemu-ga puts before ``guest-sync-delimited``'s reply (and a client before its request).
SENTINEL = b"\xff"
INT64 = range(-(1 << 63), 1 << 63)


class QgaError(Exception):
    """A command's failure, as the host will see it: an error class and a description."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


def not_found(name: str) -> QgaError:
    """qemu-ga's reply to a command it does not have."""
    return QgaError(f"The command {name} has not been found", COMMAND_NOT_FOUND)


def disabled_while_frozen(name: str) -> QgaError:
    """qemu-ga's reply to a command outside the frozen-state allowlist while frozen."""
    return QgaError(f"Command {name} has been disabled: the agent is in frozen state", COMMAND_NOT_FOUND)


_ABSENT = object()


@dataclass(frozen=True)
class Request:
    """One validated request; ``id`` is echoed in the reply when ``has_id``."""

    name: str
    arguments: Mapping[str, object] = field(default_factory=dict)
    id: object = None
    has_id: bool = False

    def to_json(self) -> bytes:
        """The request re-encoded, one line (what is forwarded)."""
        obj: dict[str, object] = {"execute": self.name}
        if self.arguments:
            obj["arguments"] = dict(self.arguments)
        if self.has_id:
            obj["id"] = self.id
        # Doubles as the other agent reads them back unchanged (-0.0, 1e5, an infinity), and
        # members in the order the host sent them (which orders the other agent's reply).
        return qjson.dumps(obj, qjson.readable_double, sent_order=True).encode() + b"\n"


class BadRequest(QgaError):
    """The input was not a valid request; ``id`` is what it carried, if anything."""

    def __init__(self, desc: str, ident: object = _ABSENT) -> None:
        super().__init__(desc)
        self.ident = ident


def parse_request(value: object) -> Request:
    """Check a parsed JSON value as qemu's dispatcher checks it (raises :class:`BadRequest`)."""
    if not isinstance(value, dict):
        raise BadRequest("QMP input must be a JSON object")
    ident = value.get("id", _ABSENT)
    name: str | None = None
    arguments: dict[str, object] = {}
    # qemu walks the members in its hash table's order: with two faults, that decides which is named.
    for key, item in qjson.qdict_order(value):
        if key == "execute":
            if not isinstance(item, str):
                raise BadRequest("QMP input member 'execute' must be a string", ident)
            name = item
        elif key == "arguments":
            if not isinstance(item, dict):
                raise BadRequest("QMP input member 'arguments' must be an object", ident)
            arguments = item
        elif key != "id":
            raise BadRequest(f"QMP input member '{key}' is unexpected", ident)
    if name is None:
        raise BadRequest("QMP input lacks member 'execute'", ident)
    return Request(name, arguments, None if ident is _ABSENT else ident, ident is not _ABSENT)


def _encode(obj: object) -> bytes:
    """One JSON line as qemu writes it (:mod:`quiesce.qga.qjson`)."""
    return qjson.dumps(obj).encode() + b"\n"


def reply_ok(value: object, request: Request, *, delimited: bool = False) -> bytes:
    """``{"return": value}`` (with the request's id), 0xFF first when ``delimited``."""
    body: dict[str, object] = {"return": value}
    if request.has_id:
        body["id"] = request.id
    return (SENTINEL if delimited else b"") + _encode(body)


def reply_error(err: QgaError, ident: object = _ABSENT) -> bytes:
    """``{"id": ID, "error": {"class": ..., "desc": ...}}``, the id only when the request had one."""
    body: dict[str, object] = {}
    if ident is not _ABSENT:
        body["id"] = ident
    body["error"] = {"class": err.error_class, "desc": err.desc}
    return _encode(body)


def request_ident(request: Request) -> object:
    """The request's id for :func:`reply_error`, or the marker for none."""
    return request.id if request.has_id else _ABSENT


def bad_request_ident(err: BadRequest) -> object:
    """The id a rejected request carried, for :func:`reply_error`."""
    return err.ident


# -- arguments, checked as QAPI's input visitor checks them -----------------

_TYPE_NAMES = {"int": "integer", "str": "string", "[str]": "array"}


def _check_type(name: str, value: object, kind: str) -> None:
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value in INT64
    elif kind == "str":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, list)
    if not ok:
        raise QgaError(f"Invalid parameter type for '{name}', expected: {_TYPE_NAMES[kind]}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_type(f"{name}[{i}]", item, "str")


def check_arguments(arguments: Mapping[str, object], spec: Mapping[str, str]) -> dict[str, object]:
    """Validate ``arguments`` against ``spec`` (name -> ``int``/``str``/``[str]``, ``*name`` optional).

    Members are checked in the spec's order (missing, then type), then a
    member the spec does not know is refused, as qemu-ga does; of several,
    the one qemu-ga names (:mod:`quiesce.qga.ghash`).
    """
    out: dict[str, object] = {}
    for key, kind in spec.items():
        name = key.lstrip("*")
        if name not in arguments:
            if not key.startswith("*"):
                raise QgaError(f"Parameter '{name}' is missing")
            continue
        _check_type(name, arguments[name], kind)
        out[name] = arguments[name]
    if len(out) < len(arguments):
        left = ghash.first_left([key for key, _ in qjson.qdict_order(dict(arguments))], out)
        raise QgaError(f"Parameter '{left}' is unexpected")
    return out
