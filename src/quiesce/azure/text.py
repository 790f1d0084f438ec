"""Reading the text of Azure's files, and the messages that say what in it is wrong.

The JSON config (:mod:`quiesce.azure.configparse`) and the plugin host INI
(:mod:`quiesce.azure.pluginhost`) are read the same way: at most
:data:`MAX_CONFIG_BYTES` from a regular file (a FIFO planted at the path
never blocks the open), UTF-8 with an optional BOM, and every fault becomes
a :class:`Rejected` whose message names the key as a JSON path
(``quiesce.snapshot.argv[2]``), the value (:func:`show`) and what was
expected. :func:`read_ini` is the one INI reader (vmbackup.conf's too).
"""

from __future__ import annotations

import configparser
import difflib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NoReturn

from quiesce.engine.trust import file_type

#: Larger files are rejected unread: a real config is well under a kilobyte.
MAX_CONFIG_BYTES = 1024 * 1024

_UTF8_BOM = b"\xef\xbb\xbf"
_SHOWN_CHARS = 80
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Rejected(Exception):
    """A fault found while checking; the public functions add the file name."""


class NotRegularFile(OSError):
    """The path names a directory, a FIFO, a device...: nothing to parse."""


def read_file(path: str) -> bytes:
    """Read at most ``MAX_CONFIG_BYTES + 1`` bytes of a regular file.

    O_NONBLOCK keeps a FIFO planted at the path from hanging the open.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"it is {file_type(mode)}, not a regular file")
        return read_up_to(fd, MAX_CONFIG_BYTES + 1)
    finally:
        os.close(fd)


def read_up_to(fd: int, limit: int) -> bytes:
    """Read from ``fd`` until EOF or ``limit`` bytes, whichever comes first."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def decode_text(data: bytes | str) -> str:
    """UTF-8 text of at most :data:`MAX_CONFIG_BYTES`, without its BOM; :class:`Rejected` otherwise."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > MAX_CONFIG_BYTES:
        raise Rejected(f"larger than {MAX_CONFIG_BYTES} bytes: expected a small config file")
    # A BOM is how some editors save UTF-8; it changes no meaning, so it is allowed.
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    body = data.removeprefix(_UTF8_BOM)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + len(data) - len(body)
        raise Rejected(
            f"not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} ({err.reason})"
        ) from None


def read_ini(text: str, first_section: str) -> configparser.ConfigParser:
    """Parse INI text as Azure's ConfigParser does; :class:`Rejected` naming the line otherwise.

    Keys are case-insensitive and comments take whole lines; interpolation
    is off (a "%" in a path is a character, not a syntax error). A key or
    section given twice is an error: the last one would silently win.
    ``first_section`` is the section a file must start with, for the message.
    """
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.DuplicateOptionError as err:
        raise Rejected(
            f"line {err.lineno}: [{err.section}] {err.option} appears more than once: expected each key once"
        ) from None
    except configparser.DuplicateSectionError as err:
        raise Rejected(f"line {err.lineno}: section [{err.section}] appears more than once") from None
    except configparser.MissingSectionHeaderError as err:
        raise Rejected(
            f"line {err.lineno}: {show(err.line.strip())} comes before any [section] header: "
            f"expected [{first_section}] first"
        ) from None
    except configparser.ParsingError as err:
        lineno, line = err.errors[0]
        raise Rejected(f"line {lineno}: cannot parse {show(line.strip())}: expected key = value") from None
    except configparser.Error as err:
        raise Rejected(f"not a valid INI file: {err}") from None
    return parser


def key_path(parent: str, key: str) -> str:
    """``parent.key``, or ``parent["odd key"]`` when the key is not a plain name."""
    if _IDENTIFIER.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{show(key)}]"


def show(value: object) -> str:
    """The value as JSON, cut to about 80 characters, safe to print."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    # A lone surrogate (from a "\ud800" escape) cannot be printed as UTF-8, and
    # DEL, C1 controls (a terminal reads \x9b as an escape) or U+2028 must not
    # act on a terminal or split a line: each is shown as its JSON escape.
    text = "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def bad(path: str, value: object, expected: str) -> NoReturn:
    """Raise :class:`Rejected`: "PATH = VALUE: expected EXPECTED"."""
    raise Rejected(f"{path} = {show(value)}: expected {expected}")


def unknown_key_hint(key: str, known: Iterable[str]) -> str:
    """ " (did you mean KEY?)" for a near miss of a known key (case or spelling), else ""."""
    lowered = {name.lower(): name for name in known}
    close = lowered.get(key.lower()) or next(iter(difflib.get_close_matches(key, list(known), n=1)), None)
    return f" (did you mean {close}?)" if close else ""


# --------------------------------------------------------------------------
# JSON


class _JSONObject(dict[str, object]):
    """A JSON object that remembers the first key it saw twice."""

    duplicate: str | None = None


@dataclass(frozen=True)
class _NonFinite:
    """``NaN``, ``Infinity`` or a number too large for a float, as written."""

    text: str


def _object_pairs(pairs: list[tuple[str, object]]) -> _JSONObject:
    result = _JSONObject()
    for key, value in pairs:
        if key in result and result.duplicate is None:
            result.duplicate = key
        result[key] = value
    return result


def _parse_float(text: str) -> float | _NonFinite:
    # Python's json turns 1e400 into inf; JSON has no infinities.
    value = float(text)
    return value if value - value == 0 else _NonFinite(text)


def decode_json(text: str) -> object:
    """The JSON document of ``text``; duplicate keys and NaN are kept for :func:`check_json_faults`."""
    if not text.strip():
        raise Rejected("the file is empty: expected a JSON object")
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_float=_parse_float,
            parse_constant=_NonFinite,
        )
    except json.JSONDecodeError as err:
        raise Rejected(f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise Rejected("invalid JSON: nested too deeply") from None
    except ValueError as err:
        # For instance an integer with more digits than Python converts; the
        # advice after ";" is about Python, not about the file.
        raise Rejected(f"invalid JSON: {str(err).split(';')[0]}") from None


def check_json_faults(document: object) -> None:
    """Reject duplicate keys and non-finite numbers anywhere, naming their path.

    Iterative, so a deeply nested document cannot exhaust the stack here.
    """
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _NonFinite):
            where = path or "the top level"
            raise Rejected(f"{where} = {value.text}: expected a finite number (JSON has no NaN or Infinity)")
        children: list[tuple[str, object]] = []
        if isinstance(value, _JSONObject):
            if value.duplicate is not None:
                raise Rejected(
                    f"duplicate key {key_path(path, value.duplicate)}: "
                    "expected each key once (the last one would silently override the first)"
                )
            children = [(key_path(path, key), item) for key, item in value.items()]
        elif isinstance(value, list):
            children = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        stack.extend(reversed(children))
