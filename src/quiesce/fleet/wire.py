"""The gateway's encoding: base64 keys and values, prefix ranges, JSON values, revisions.

etcd's answers are read strictly: a number that is not one, a key that is
not base64, a list where an object belongs is a :class:`FleetError` naming
what was malformed, never another exception and never a guess.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

from quiesce.fleet import FleetError

#: What etcd says when a request needs a (new) token.
RELOGIN = ("auth", "token", "user name is empty")


def b64(text: str) -> str:
    """A key or value as the gateway takes it."""
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    """A key as the gateway gives it (bytes that are not UTF-8 become U+FFFD: no valid name has one)."""
    return base64.b64decode(text, validate=True).decode(errors="replace")


def range_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


#: An int64 as the gateway writes one (a JSON string of decimal digits; a number is taken too).
_INT64 = re.compile(r"-?[0-9]{1,19}")


def number(value: Any, what: str, minimum: int = 0) -> int:
    """An integer of etcd's answer, at least ``minimum``: FleetError for anything else.

    ``int()`` alone would take ``"1_0"``, ``" 5"``, ``True`` or ``5.9``.
    """
    if isinstance(value, str) and _INT64.fullmatch(value):
        found = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        found = value
    else:
        raise FleetError(f"etcd answered a malformed {what}: {value!r:.60}")
    if not minimum <= found < 2**63:
        raise FleetError(f"etcd answered a {what} out of range: {found}")
    return found


def revision(answer: Mapping[str, Any]) -> int:
    """The store's revision in an answer's header."""
    header = answer.get("header")
    if not isinstance(header, Mapping) or "revision" not in header:
        raise FleetError(f"etcd answered without a revision: {dict(answer)!r:.200}")
    return number(header["revision"], "revision")


def kv_record(kv: Any) -> tuple[str, dict[str, Any], int, int]:
    """One of etcd's key-values: (key, value as in :func:`decode_value`, mod revision, create revision)."""
    if not isinstance(kv, Mapping) or not isinstance(kv.get("key"), str):
        raise FleetError(f"etcd answered a malformed key-value: {kv!r:.100}")
    raw = kv.get("value")
    if raw is not None and not isinstance(raw, str):
        raise FleetError(f"etcd answered a malformed value: {raw!r:.60}")
    try:
        key = unb64(kv["key"])
    except (binascii.Error, ValueError) as err:
        raise FleetError(f"etcd answered a key that is not base64: {kv['key']!r:.60}") from err
    mod = number(kv.get("mod_revision"), "mod_revision")
    return key, decode_value(raw), mod, number(kv.get("create_revision", 0), "create_revision")


#: An auth token: printable ASCII without blanks (etcd's simple tokens and JWTs are): it goes in a header.
_TOKEN = re.compile(r"[!-~]{1,4096}")


def token(answer: Any) -> str:
    """The token of etcd's answer to a login: FleetError for anything that could not go in a header line."""
    found = answer.get("token") if isinstance(answer, Mapping) else None
    if not isinstance(found, str) or not _TOKEN.fullmatch(found):
        raise FleetError(f"etcd answered a login without a well-formed token: {found!r:.60}")
    return found


def listed(answer: Mapping[str, Any], field: str) -> list[Any]:
    """``answer[field]``, a list (etcd leaves an empty one out)."""
    found = answer.get(field, [])
    if not isinstance(found, list):
        raise FleetError(f"etcd answered a malformed {field}: {found!r:.60}")
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_value(raw: str | None) -> dict[str, Any]:
    """A value as a JSON object (anything else wrapped in one).

    Values are written by whoever holds the group's role: one that is not
    strict JSON (``NaN``, ``Infinity``), or nested too deep to parse, comes
    back as ``{"raw": ...}``, so nothing read from etcd can raise here or
    make quiesce's own JSON output invalid.
    """
    if not raw:
        return {}
    try:
        value = json.loads(base64.b64decode(raw, validate=True), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return {"raw": raw}
    return value if isinstance(value, dict) else {"value": value}
