"""JSON written as qemu-ga writes it, so that a reply is the same bytes as its.

qemu keeps a JSON object in a ``QDict``: a hash table of 512 buckets, each
new key put first in its bucket, and it writes the members bucket by bucket.
So the order of an object's members on the wire is the table's, not the
order they were sent or added in: ``{"b": 1, "a": 2}`` comes back as
``{"a": 2, "b": 1}``. Separators are ``", "`` and ``": "``; strings are
ASCII with upper-case ``\\uXXXX`` escapes; a double is written with
``%.17g`` (``0.1`` as ``0.10000000000000001``, ``1e5`` as ``100000``,
infinity as ``inf``). Any depth the reader took (1024) is written back:
the writer keeps its own stack, not Python's.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from quiesce.qga import ghash

#: How many buckets a QDict has.
QDICT_BUCKETS = 512
#: A \\uXXXX escape (not an escaped backslash followed by "u").
_UNICODE_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-f]{4})")


class _Text(str):
    """Output already written (a bracket, a separator, a key), as opposed to a value still to write."""


def qdict_bucket(key: str) -> int:
    """The bucket of ``key`` in a QDict (qemu's ``tdb_hash`` of its bytes, modulo 512).

    The bytes are the key as qemu holds it, modified UTF-8: U+0000 is C0 80 (:func:`ghash.c_bytes`).
    """
    data = ghash.c_bytes(key)
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % QDICT_BUCKETS


def qdict_order(obj: dict[str, object]) -> list[tuple[str, object]]:
    """The members in the order qemu writes them: by bucket, the latest added first within one."""
    ranked = [(qdict_bucket(key), -n, key, value) for n, (key, value) in enumerate(obj.items())]
    ranked.sort(key=lambda r: (r[0], r[1]))
    return [(key, value) for _, _, key, value in ranked]


def string(text: str) -> str:
    """A JSON string as qemu writes it: ASCII, upper-case hex in ``\\u`` escapes."""
    out = json.dumps(text)
    if "\\u" in out:
        out = _UNICODE_ESCAPE.sub(lambda m: f"{m.group(1)}\\u{m.group(2).upper()}", out)
    return out


def qemu_double(value: float) -> str:
    """A double as qemu writes it in a reply: ``%.17g`` (``inf`` for an infinity, which JSON has not)."""
    return "%.17g" % value  # noqa: UP031 - C's %g, which f-strings do not spell the same way


def readable_double(value: float) -> str:
    """A double that qemu reads back as the same double (a request passed on to another agent).

    ``%.17g`` would not do there: ``-0`` reads back as the integer 0, ``100000``
    as an integer, and ``inf`` not at all. An infinity is written as a literal
    that overflows to it (``1e400``), as the host may have sent it.
    """
    if math.isinf(value):
        return "1e400" if value > 0 else "-1e400"
    return repr(value)


def _scalar(value: object, double: Callable[[float], str]) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return double(value)
    if isinstance(value, str):
        return string(value)
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def dumps(obj: object, double: Callable[[float], str] = qemu_double, *, sent_order: bool = False) -> str:
    """``obj`` (dicts with string keys, lists, strings, numbers, booleans, None) as qemu writes it.

    ``double`` writes a float: :func:`qemu_double` in a reply, :func:`readable_double`
    in a request that another agent will read. ``sent_order`` writes an object's
    members in the order they were added (the order the host sent them), not
    qemu's: a request passed on must reach the other agent as the host sent it,
    since the order members reach qemu decides its own (two keys in one bucket).
    """
    parts: list[str] = []
    todo: list[object] = [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, _Text):
            parts.append(item)
        elif isinstance(item, dict):
            members = list(item.items()) if sent_order else qdict_order(item)
            if not members:
                parts.append("{}")
                continue
            todo.append(_Text("}"))
            for n in range(len(members) - 1, -1, -1):
                key, value = members[n]
                todo.append(value)
                todo.append(_Text(("{" if n == 0 else ", ") + string(str(key)) + ": "))
        elif isinstance(item, list):
            if not item:
                parts.append("[]")
                continue
            todo.append(_Text("]"))
            for n in range(len(item) - 1, -1, -1):
                todo.append(item[n])
                todo.append(_Text("[" if n == 0 else ", "))
        else:
            parts.append(_scalar(item, double))
    return "".join(parts)
