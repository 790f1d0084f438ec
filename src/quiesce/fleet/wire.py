"""The gateway's encoding: base64 keys and values, prefix ranges, JSON values, revisions."""

from __future__ import annotations

import base64
import json
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
    return base64.b64decode(text).decode(errors="replace")


def range_end(prefix: str) -> str:
    """The first key after every key starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def revision(answer: Mapping[str, Any]) -> int:
    """The store's revision in an answer's header."""
    try:
        return int(answer["header"]["revision"])
    except (KeyError, TypeError, ValueError) as err:
        raise FleetError(f"etcd answered without a revision: {dict(answer)!r:.200}") from err


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
        value = json.loads(base64.b64decode(raw), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return {"raw": raw}
    return value if isinstance(value, dict) else {"value": value}
