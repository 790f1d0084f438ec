"""The guest-agent wire format: a stream of JSON values, split the way qemu-ga splits it.

qemu-ga does not read lines: a lexer turns the byte stream into tokens, and
a value is complete when its braces and brackets balance. Requests may span
lines or share one, a stray character is an error of its own (the lexer
then skips to the next structural character or control byte, so a burst of
garbage costs one error, not one per byte), a bare word or number at the
top level is a complete (wrong) value, and a 0xFF byte (what a client sends
before ``guest-sync-delimited``) is invalid, which discards any partial
request. This module reproduces that behaviour, including single-quoted
strings (a QEMU extension), so the errors a host sees for bad input have
qemu-ga's shape and class.

Limits as qemu's: 64 MiB for a value's text, 2^21 tokens, nesting 1024.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_VALUE_BYTES = 64 << 20
MAX_TOKENS = 2 << 20
MAX_NESTING = 1024

_STRUCTURAL = frozenset(b"{}[]:,")
_SPACE = frozenset(b" \t\r\n")
#: Where error recovery resumes: a structural character (brackets, ``:`` and ``,``, as
#: qemu's lexer has it), a control byte other than tab, or an impossible UTF-8 byte
#: (0xFE, 0xFF). Not consumed.
_RESYNC = re.compile(rb"[\x00-\x08\x0a-\x1f\xfe\xff\[\]{}:,]")
#: A string's body as the lexer takes it: escapes are checked later, by the parser.
_STRING_BODY = {
    ord('"'): re.compile(rb'(?:[^"\\\x00-\x1f\xfe\xff]|\\[^\x00-\x1f\xfe\xff])*'),
    ord("'"): re.compile(rb"(?:[^'\\\x00-\x1f\xfe\xff]|\\[^\x00-\x1f\xfe\xff])*"),
}
_KEYWORD = re.compile(rb"[a-z]*")
_NUMBER_CHARS = re.compile(rb"[-+.0-9eE]*")
_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", '"': '"', "'": "'", "\\": "\\", "/": "/"}
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")
_KEYWORDS: dict[str, object] = {"true": True, "false": False, "null": None}


#: What qemu-ga puts before a lexer's or a parser's message (not before a limit's).
PARSE_ERROR = "JSON parse error, "


class JsonError(Exception):
    """A value that cannot be parsed; the message is what follows :data:`PARSE_ERROR`."""


@dataclass(frozen=True)
class Parsed:
    """One complete top-level value, or the error that replaced it."""

    value: object = None
    #: The reply's ``desc`` as qemu-ga words it: a lexer's or a parser's error after
    #: :data:`PARSE_ERROR`, a limit's ("JSON nesting depth limit exceeded") alone.
    error: str | None = None


def _unmodified(raw: bytes) -> bytes:
    """Modified UTF-8, as qemu reads text, made UTF-8: C0 80 is U+0000 (any other C0 stays invalid)."""
    return raw.replace(b"\xc0\x80", b"\0")


def quote_token(raw: bytes) -> str:
    """A token as qemu's messages show it: its text up to a NUL (a C string), read as modified UTF-8,
    anything invalid as U+FFFD."""
    return _unmodified(raw.split(b"\0", 1)[0]).decode("utf-8", "replace")


def _number_end(buf: bytes | bytearray, i: int) -> int | None:
    """End of the number starting at ``i``; None when more input is needed.

    On an error, ``-(k + 1)`` where ``k`` is the end of the error token (the
    offending byte included, as qemu's lexer reports it).
    """
    n = len(buf)
    j = i + (buf[i] == 0x2D)  # '-'
    if j >= n:
        return None
    # A bare "0" takes no more digits ("00" is an error token) and no exponent ("0e5" is 0, then
    # the keyword "e5"): qemu's lexer. "0.5e3" is a number.
    exponent_allowed = buf[j] != 0x30
    if buf[j] == 0x30:
        j += 1
        if j >= n:
            return None
        if 0x30 <= buf[j] <= 0x39:
            return -(j + 2)
    elif 0x31 <= buf[j] <= 0x39:
        while j < n and 0x30 <= buf[j] <= 0x39:
            j += 1
    else:
        return -(j + 2)
    for intro, signed in ((0x2E, False), (0x65, True)):  # '.' fraction, then 'e' exponent
        if j >= n:
            return None
        if signed and not exponent_allowed:
            break
        if buf[j] == intro or (signed and buf[j] == 0x45):
            exponent_allowed = True
            j += 1
            if signed and j < n and buf[j] in b"+-":
                j += 1
            if j >= n:
                return None
            if not 0x30 <= buf[j] <= 0x39:
                return -(j + 2)
            while j < n and 0x30 <= buf[j] <= 0x39:
                j += 1
    return None if j >= n else j


class JsonStream:
    """Feed bytes as they arrive; get back the complete values and the errors, in order."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._recovering = False
        self._tokens: list[tuple[str, object]] = []
        self._size = 0
        #: How far into a token left incomplete at the buffer's start it is
        #: known good, so more input is scanned from there, not from its start.
        self._resume = 0
        self._braces = 0
        self._brackets = 0

    def reset(self) -> None:
        """Forget everything buffered (a new client)."""
        self.__init__()  # type: ignore[misc]

    def feed(self, data: bytes) -> list[Parsed]:
        """Append ``data``; return what it completed."""
        self._buf += data
        out: list[Parsed] = []
        buf = self._buf
        i, n = 0, len(buf)
        while i < n:
            resume, self._resume = self._resume, 0
            if self._recovering:
                m = _RESYNC.search(buf, i)
                if m is None:
                    i = n
                    break
                i, self._recovering = m.start(), False
            c = buf[i]
            if c in _SPACE:
                i += 1
            elif c in _STRUCTURAL:
                self._token(chr(c), None, 1, out)
                i += 1
            elif c in _STRING_BODY:
                j = _STRING_BODY[c].match(buf, i + max(1, resume)).end()  # type: ignore[union-attr]
                if j < n and buf[j] == c:
                    self._string(bytes(buf[i + 1 : j]), chr(c), j + 1 - i, out)
                    i = j + 1
                elif j == n or (j == n - 1 and buf[j] == 0x5C):
                    self._resume = j - i  # j ends a whole character or escape
                    break  # the string goes on in data still to come
                else:
                    # The byte that broke the string ends the error token; after a backslash,
                    # the byte it failed to escape does (qemu's lexer takes both).
                    stop = j + 2 if buf[j] == 0x5C else j + 1
                    self._error(buf[i:stop], out)
                    i = stop
            elif c == 0x2D or 0x30 <= c <= 0x39:
                k = _NUMBER_CHARS.match(buf, i + resume).end()  # type: ignore[union-attr]
                if k == n:
                    self._resume = k - i
                    break
                end = _number_end(buf, i)
                if end is None:
                    break
                if end < 0:
                    stop = -end - 1  # the offending byte is part of the error token
                    self._error(buf[i:stop], out)
                    i = stop
                    continue
                self._token("num", bytes(buf[i:end]), end - i, out)
                i = end
            elif 0x61 <= c <= 0x7A:
                j = _KEYWORD.match(buf, i + resume).end()  # type: ignore[union-attr]
                if j == n:
                    self._resume = j - i
                    break
                self._token("kw", bytes(buf[i:j]).decode(), j - i, out)
                i = j
            else:
                self._error(buf[i : i + 1], out)
                i += 1
        del buf[:i]
        if len(buf) > MAX_VALUE_BYTES:
            # One token longer than any value may be: drop it, resume after it.
            buf.clear()
            self._resume = 0
            self._recovering = True
            self._drop(out, "JSON token size limit exceeded")
        return out

    # -- the streamer: collect tokens until the brackets balance ------------

    def _token(self, kind: str, value: object, size: int, out: list[Parsed]) -> None:
        self._tokens.append((kind, value))
        self._size += size
        if kind in "{[":
            self._braces += kind == "{"
            self._brackets += kind == "["
        elif kind in "}]":
            self._braces -= kind == "}"
            self._brackets -= kind == "]"
        if self._braces + self._brackets > MAX_NESTING:
            self._drop(out, "JSON nesting depth limit exceeded")
        elif self._size > MAX_VALUE_BYTES:
            self._drop(out, "JSON token size limit exceeded")
        elif len(self._tokens) > MAX_TOKENS:
            self._drop(out, "JSON token count limit exceeded")
        elif (self._braces == 0 and self._brackets == 0) or self._braces < 0 or self._brackets < 0:
            tokens = self._tokens
            self._tokens, self._size, self._braces, self._brackets = [], 0, 0, 0
            try:
                out.append(Parsed(value=_Parser(tokens).parse()))
            except JsonError as err:
                out.append(Parsed(error=f"{PARSE_ERROR}{err}"))

    def _string(self, body: bytes, quote: str, size: int, out: list[Parsed]) -> None:
        try:
            text = _unescape(_unmodified(body).decode("utf-8"), quote)
        except UnicodeDecodeError:
            self._token("bad", "invalid UTF-8 sequence in string", size, out)
        except JsonError as err:
            self._token("bad", str(err), size, out)
        else:
            self._token("str", text, size, out)

    def _error(self, raw: bytes | bytearray, out: list[Parsed]) -> None:
        self._recovering = True
        self._drop(out, f"{PARSE_ERROR}stray '{quote_token(bytes(raw))}'")

    def _drop(self, out: list[Parsed], message: str) -> None:
        self._tokens, self._size, self._braces, self._brackets = [], 0, 0, 0
        out.append(Parsed(error=message))


def _unescape(text: str, quote: str) -> str:
    if "\\" not in text:
        return text
    out: list[str] = []
    at = 0
    while (m := _ESCAPE.search(text, at)) is not None:
        out.append(text[at : m.start()])
        at = m.end()
        esc = m.group(1)
        if esc == "u":  # not four hex digits: qemu names the six characters from the backslash
            named = (text[m.start() : m.start() + 6] + quote)[:6]
            raise JsonError(f"{named} is not a valid Unicode character")
        if len(esc) != 5:
            if esc not in _ESCAPES:
                raise JsonError("invalid escape sequence in string")
            out.append(_ESCAPES[esc])
            continue
        cp = int(esc[1:], 16)
        if 0xD800 <= cp <= 0xDBFF:  # a leading surrogate: one character with the trailing one after it
            pair = _ESCAPE.match(text, at)
            low = int(pair.group(1)[1:], 16) if pair and len(pair.group(1)) == 5 else -1
            if 0xDC00 <= low <= 0xDFFF:
                out.append(chr(0x10000 + ((cp & 0x3FF) << 10) + (low & 0x3FF)))
                at = pair.end()  # type: ignore[union-attr]
                continue
        if 0xD800 <= cp <= 0xDFFF:  # alone, or a trailing one first: no character (as qemu says)
            raise JsonError(f"{m.group(0)} is not a valid Unicode character")
        out.append(chr(cp))
    out.append(text[at:])
    return "".join(out)


class _Parser:
    """One balanced token list to a value, with an explicit stack (nesting up to 1024 is allowed)."""

    def __init__(self, tokens: list[tuple[str, object]]) -> None:
        self.tokens = tokens
        self.i = 0

    def _next(self) -> tuple[str, object]:
        if self.i >= len(self.tokens):
            raise JsonError("premature EOI")
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _peek_is(self, kind: str) -> bool:
        return self.i < len(self.tokens) and self.tokens[self.i][0] == kind

    def parse(self) -> object:
        # Open containers: a list being filled, or an object and the key of its next value
        # (None while that key is itself being parsed: any value may stand there, as in qemu,
        # which parses it whole before it finds it is not a string).
        stack: list[list[object] | _OpenObject] = []
        while True:
            kind, value = self._next()
            if kind == "{":
                if not self._peek_is("}"):
                    stack.append(_OpenObject())
                    continue
                self.i += 1
                value = {}
            elif kind == "[":
                if not self._peek_is("]"):
                    stack.append([])
                    continue
                self.i += 1
                value = []
            else:
                value = _scalar(kind, value)
            # A value is complete: put it in its container, closing those that end here.
            while stack:
                top = stack[-1]
                if isinstance(top, _OpenObject):
                    if top.key is None:  # the value was this member's key
                        if not isinstance(value, str):
                            raise JsonError("key is not a string in object")
                        if self._next()[0] != ":":
                            raise JsonError("missing : in object pair")
                        top.key = value
                        break
                    if top.key in top.members:
                        raise JsonError("duplicate key")
                    top.members[top.key] = value
                    sep = self._next()[0]
                    if sep == ",":
                        top.key = None
                        break
                    if sep != "}":
                        raise JsonError("expected separator in dict")
                    value = top.members
                else:
                    top.append(value)
                    sep = self._next()[0]
                    if sep == ",":
                        break
                    if sep != "]":
                        raise JsonError("expected separator in list")
                    value = top
                stack.pop()
            else:
                if self.i != len(self.tokens):
                    raise JsonError("expecting value")
                return value


class _OpenObject:
    """An object being parsed: its members so far and the key of the value being parsed."""

    __slots__ = ("key", "members")

    def __init__(self) -> None:
        self.members: dict[str, object] = {}
        self.key: str | None = None


def _scalar(kind: str, value: object) -> object:
    if kind == "str":
        return value
    if kind == "num":
        return _number(value)  # type: ignore[arg-type]
    if kind == "kw":
        if value in _KEYWORDS:
            return _KEYWORDS[str(value)]
        raise JsonError(f"invalid keyword '{value}'")
    if kind == "bad":
        raise JsonError(str(value))
    raise JsonError("expecting value")


def _number(raw: bytes) -> int | float:
    text = raw.decode()
    if any(c in text for c in ".eE") or len(text) > 21:
        # Too long for a 64-bit integer: a double, as in qemu (and Python's
        # int() refuses very long digit strings).
        return float(text)
    value = int(text)
    # qemu keeps an integer that fits int64, or uint64 when not negative; any other is a double.
    if -(1 << 63) <= value < (1 << 64):
        return value
    return float(text)
