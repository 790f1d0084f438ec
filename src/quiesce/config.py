"""Azure's pre/post-script plugin config, read unchanged and checked strictly.

Two files, both from Azure Backup's Linux framework:

* ``/etc/azure/VMSnapshotScriptPluginConfig.json`` (:func:`load_config`): the
  scripts, their parameters, retries, timeout and failure policy. Its keys keep
  Azure's names and documented meanings. quiesce's own settings live in one
  nested object under the top-level key ``"quiesce"`` (:class:`Extensions`), so
  they can never clash with a key Azure adds later.
* ``/etc/azure/VMSnapshotPluginHost.conf`` (:func:`load_pluginhost`): the
  optional INI file that lists the plugins and caps their timeout.

Where Azure's code is lenient, quiesce is strict, because a config that is
silently reinterpreted is a config that lies: the string ``"false"`` is not
true, ``3600`` seconds is not quietly cut to 1800, a duplicate key is not
resolved by taking the last one, and ``NaN`` is not a number. Every rejection
raises :class:`~quiesce.errors.IncorrectJSONConfigFile` (or
:class:`~quiesce.errors.IncorrectPluginhostFile`) with a message naming the
file, the key as a JSON path (``quiesce.snapshot.argv[2]``), the value and what
was expected. Unknown top-level keys are only reported as warnings: Azure adds
keys over time and ignores the ones it does not know.

Nothing here checks owners or modes: the permission checks open the file once,
check the descriptor, and hand the bytes they read to :func:`parse_config`.
"""

from __future__ import annotations

import configparser
import difflib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NoReturn

from quiesce.errors import ConfigNotFoundError, IncorrectJSONConfigFile, IncorrectPluginhostFile

__all__ = [
    "AZURE_KEYS",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_FREEZE_TIMEOUT_S",
    "DEFAULT_GRACE_S",
    "DEFAULT_PLUGINHOST",
    "DEFAULT_PLUGINHOST_PATH",
    "DEFAULT_PLUGIN_NAME",
    "DEFAULT_POLL_S",
    "DEFAULT_RETRY_BACKOFF_S",
    "DEFAULT_TIMEOUT_S",
    "EXTENSION_KEY",
    "EXTENSION_KEYS",
    "MAX_CONFIG_BYTES",
    "MAX_FREEZE_TIMEOUT_S",
    "MAX_GRACE_S",
    "MAX_PLUGINS",
    "MAX_POLL_S",
    "MAX_RETRIES",
    "MAX_RETRY_BACKOFF_S",
    "MAX_TIMEOUT_S",
    "MIN_POLL_S",
    "MIN_TIMEOUT_S",
    "SCRIPT_RUNNER",
    "SNAPSHOT_KEYS",
    "Extensions",
    "LoadedConfig",
    "PluginConfig",
    "PluginEntry",
    "PluginHostConfig",
    "SnapshotMode",
    "SnapshotSpec",
    "effective_timeout_s",
    "load_config",
    "load_pluginhost",
    "parse_config",
    "parse_pluginhost",
]

DEFAULT_CONFIG_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"
DEFAULT_PLUGINHOST_PATH = "/etc/azure/VMSnapshotPluginHost.conf"

#: The only plugin Azure ships, and the only one quiesce implements.
SCRIPT_RUNNER = "ScriptRunner"
DEFAULT_PLUGIN_NAME = SCRIPT_RUNNER

#: ``timeoutInSeconds``: Azure documents 1800 as the maximum. Below 1 a script
#: could never succeed.
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 1800
#: Azure's ScriptRunner uses 10 s when the key is absent (the sample says 30).
DEFAULT_TIMEOUT_S = 10

#: Retries are real re-runs here, each up to the full timeout: 10 retries of a
#: 1800 s script is already more than five hours per phase.
MAX_RETRIES = 10

#: ``ScriptsExecutionPollTimeSeconds``: documented as an integer from 1 to 5,
#: default 3. quiesce sees a script's exit at once (pidfd); this only paces
#: progress reports.
MIN_POLL_S = 1
MAX_POLL_S = 5
DEFAULT_POLL_S = 3

#: ``quiesce.freezeTimeoutSeconds``: the guardian thaws after this long. The
#: default is Azure's own auto-thaw (``[SnapshotThread] timeout`` in vmbackup.conf).
DEFAULT_FREEZE_TIMEOUT_S = 60.0
MAX_FREEZE_TIMEOUT_S = 3600.0
#: ``quiesce.graceSeconds``: SIGTERM to SIGKILL. A longer grace would be a
#: second timeout in disguise.
DEFAULT_GRACE_S = 5.0
MAX_GRACE_S = 60.0
#: ``quiesce.retryBackoffSeconds``: pause between a failed attempt and the next.
DEFAULT_RETRY_BACKOFF_S = 0.0
MAX_RETRY_BACKOFF_S = 300.0

#: Larger files are rejected unread: a real config is well under a kilobyte.
MAX_CONFIG_BYTES = 1024 * 1024
#: ``numberOfPlugins`` in the plugin host INI.
MAX_PLUGINS = 16

#: Azure's top-level keys. ``appName`` is undocumented but read by Azure's
#: ScriptRunner (it goes to telemetry), so it is known rather than "unknown".
AZURE_KEYS = (
    "pluginName",
    "preScriptLocation",
    "postScriptLocation",
    "preScriptParams",
    "postScriptParams",
    "preScriptNoOfRetries",
    "postScriptNoOfRetries",
    "timeoutInSeconds",
    "continueBackupOnFailure",
    "fsFreezeEnabled",
    "ScriptsExecutionPollTimeSeconds",
    "appName",
)
#: The top-level key holding quiesce's own settings.
EXTENSION_KEY = "quiesce"
#: The keys allowed inside ``"quiesce"``.
EXTENSION_KEYS = (
    "targets",
    "exclude",
    "excludeFstypes",
    "freezeTimeoutSeconds",
    "graceSeconds",
    "retryBackoffSeconds",
    "hookDirectory",
    "snapshot",
    "preflush",
    "expediteRcu",
    "parallelFreeze",
    "loopBackingFstypes",
)
#: The keys allowed inside ``"quiesce": {"snapshot": ...}``.
SNAPSHOT_KEYS = ("mode", "argv", "timeoutSeconds")

_UTF8_BOM = b"\xef\xbb\xbf"
_SHOWN_CHARS = 80
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGITS = re.compile(r"[0-9]+")


# --------------------------------------------------------------------------
# the JSON config


class SnapshotMode(StrEnum):
    """What happens while the filesystems are frozen; each value is the JSON string."""

    #: Freeze and thaw at once; the snapshot is taken by someone else (Azure's host).
    NONE = "none"
    #: Run ``argv`` inside the frozen window, bounded by ``timeoutSeconds``.
    COMMAND = "command"
    #: Stay frozen until released (or until ``freezeTimeoutSeconds``).
    HOLD = "hold"


@dataclass(frozen=True)
class SnapshotSpec:
    """``quiesce.snapshot``: how the snapshot is taken inside the frozen window.

    ``argv`` and ``timeout_s`` are set exactly when ``mode`` is
    :attr:`SnapshotMode.COMMAND`. ``argv[0]`` is an absolute path (the command
    runs as root, so no ``PATH`` lookup), there is no shell, and ``timeout_s``
    is less than the freeze timeout so the command is stopped before the
    guardian thaws under it.
    """

    mode: SnapshotMode = SnapshotMode.NONE
    argv: tuple[str, ...] = ()
    timeout_s: float | None = None

    def to_dict(self) -> dict[str, object]:
        """The ``snapshot`` object as it is written in the config."""
        if self.mode is not SnapshotMode.COMMAND:
            return {"mode": self.mode.value}
        return {"mode": self.mode.value, "argv": list(self.argv), "timeoutSeconds": self.timeout_s}


@dataclass(frozen=True)
class Extensions:
    """quiesce's own settings, from the top-level ``"quiesce"`` object.

    Every key is optional; unknown keys are errors, since the namespace is ours.

    ``targets``
        Mount points or globs to freeze; empty means every freezable filesystem.
    ``exclude`` / ``exclude_fstypes``
        Mount points or globs, and filesystem types or globs, never to freeze.
    ``freeze_timeout_s``
        How long filesystems may stay frozen before the guardian thaws them.
    ``grace_s``
        On a script timeout: SIGTERM, then this long, then SIGKILL of the whole
        tree. It never extends a script's life beyond timeout + grace.
    ``retry_backoff_s``
        Pause between a failed script attempt and its retry.
    ``hook_directory``
        A directory of hooks run besides the pre/post pair; ``None`` for none.
    ``snapshot``
        What happens inside the frozen window (:class:`SnapshotSpec`).
    ``preflush``
        ``syncfs()`` every target in parallel just before the freeze.
    ``expedite_rcu``
        Expedite RCU grace periods for the window (``/sys/kernel/rcu_expedited``,
        system-wide, restored after): a cold FIFREEZE then costs about a
        millisecond instead of tens. See :mod:`quiesce.rcu`.
    ``parallel_freeze``
        Freeze independent filesystems at once, one thread each.
    ``loop_backing_fstypes``
        Filesystem types (or globs) accepted under a loop device's image. A
        filesystem whose image lives on FUSE or a network filesystem is
        skipped unless its type is listed here (the FUSE daemon or the
        network could block its FIFREEZE).
    """

    targets: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_fstypes: tuple[str, ...] = ()
    freeze_timeout_s: float = DEFAULT_FREEZE_TIMEOUT_S
    grace_s: float = DEFAULT_GRACE_S
    retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S
    hook_directory: str | None = None
    snapshot: SnapshotSpec = field(default_factory=SnapshotSpec)
    preflush: bool = True
    expedite_rcu: bool = False
    parallel_freeze: bool = False
    loop_backing_fstypes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The ``"quiesce"`` object with every key spelled out."""
        return {
            "targets": list(self.targets),
            "exclude": list(self.exclude),
            "excludeFstypes": list(self.exclude_fstypes),
            "freezeTimeoutSeconds": self.freeze_timeout_s,
            "graceSeconds": self.grace_s,
            "retryBackoffSeconds": self.retry_backoff_s,
            "hookDirectory": self.hook_directory,
            "snapshot": self.snapshot.to_dict(),
            "preflush": self.preflush,
            "expediteRcu": self.expedite_rcu,
            "parallelFreeze": self.parallel_freeze,
            "loopBackingFstypes": list(self.loop_backing_fstypes),
        }


@dataclass(frozen=True)
class PluginConfig:
    """One ``VMSnapshotScriptPluginConfig.json``, every key typed and checked.

    Each field is one of Azure's keys (named in ``to_dict``); ``quiesce`` holds
    the extension object. The parameter tuples become argv entries one for
    one, with no shell in between. ``timeout_s`` applies to the pre-script and
    the post-script separately (see :func:`effective_timeout_s` for the plugin
    host's cap). ``poll_s`` only paces progress reports.
    """

    pre_script: str
    post_script: str
    plugin_name: str = DEFAULT_PLUGIN_NAME
    pre_params: tuple[str, ...] = ()
    post_params: tuple[str, ...] = ()
    pre_retries: int = 0
    post_retries: int = 0
    timeout_s: int = DEFAULT_TIMEOUT_S
    continue_on_failure: bool = True
    fs_freeze_enabled: bool = True
    poll_s: int = DEFAULT_POLL_S
    app_name: str | None = None
    quiesce: Extensions = field(default_factory=Extensions)

    def to_dict(self) -> dict[str, object]:
        """The config in Azure's key names; ``parse_config`` of its JSON gives it back."""
        data: dict[str, object] = {
            "pluginName": self.plugin_name,
            "preScriptLocation": self.pre_script,
            "postScriptLocation": self.post_script,
            "preScriptParams": list(self.pre_params),
            "postScriptParams": list(self.post_params),
            "preScriptNoOfRetries": self.pre_retries,
            "postScriptNoOfRetries": self.post_retries,
            "timeoutInSeconds": self.timeout_s,
            "continueBackupOnFailure": self.continue_on_failure,
            "fsFreezeEnabled": self.fs_freeze_enabled,
            "ScriptsExecutionPollTimeSeconds": self.poll_s,
        }
        if self.app_name is not None:
            data["appName"] = self.app_name
        data[EXTENSION_KEY] = self.quiesce.to_dict()
        return data


@dataclass(frozen=True)
class LoadedConfig:
    """A parsed config, where it came from, and what was accepted but worth saying."""

    config: PluginConfig
    warnings: tuple[str, ...] = ()
    source: str = "<string>"

    def to_dict(self) -> dict[str, object]:
        """The config (Azure's key names), the warnings and the source."""
        return {"source": self.source, "config": self.config.to_dict(), "warnings": list(self.warnings)}


def load_config(
    path: str = DEFAULT_CONFIG_PATH, *, read: Callable[[str], bytes] | None = None
) -> LoadedConfig:
    """Read and check the plugin config at ``path``.

    ``read`` replaces the file reading (the permission checks pass the bytes of
    the descriptor they checked); it may raise :class:`OSError`. A missing file
    (or something other than a regular file, which Azure treats alike) raises
    :class:`ConfigNotFoundError`; an unreadable or invalid one
    :class:`IncorrectJSONConfigFile`. Owners and modes are not checked here.
    """
    try:
        data = (read or _read_file)(path)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ConfigNotFoundError(f"{path}: no plugin config file ({err.strerror})") from err
    except _NotRegularFile as err:
        raise ConfigNotFoundError(f"{path}: no plugin config file: {err}") from err
    except OSError as err:
        raise IncorrectJSONConfigFile(f"{path}: cannot read: {err.strerror or err}") from err
    return parse_config(data, source=path)


def parse_config(data: bytes | str, source: str = "<string>") -> LoadedConfig:
    """Parse and check a plugin config given as UTF-8 bytes or text.

    ``source`` names the file in messages. Raises
    :class:`IncorrectJSONConfigFile` for anything wrong, never another error.
    """
    try:
        document = _decode_json(_decode_text(data))
        _check_json_faults(document)
        config, warnings = _plugin_config(document)
    except _Rejected as err:
        raise IncorrectJSONConfigFile(f"{source}: {err}") from None
    return LoadedConfig(config=config, warnings=tuple(warnings), source=source)


# --------------------------------------------------------------------------
# the plugin host INI


@dataclass(frozen=True)
class PluginEntry:
    """One plugin of the plugin host INI: ``pluginNameN``, ``pluginPathN``, ``pluginConfigPathN``.

    ``config_path`` is the JSON config to load for it. ``path`` is where Azure
    imports the plugin's Python module from; quiesce imports nothing, so it is
    kept only to be reported.
    """

    name: str
    path: str
    config_path: str

    def to_dict(self) -> dict[str, object]:
        """The entry in the INI's key names, without the index."""
        return {"pluginName": self.name, "pluginPath": self.path, "pluginConfigPath": self.config_path}


@dataclass(frozen=True)
class PluginHostConfig:
    """``VMSnapshotPluginHost.conf``: the plugin list and the timeout cap.

    How it combines with the JSON, as in Azure's PluginHost:

    * ``timeout_s`` caps every plugin's ``timeoutInSeconds``: each script gets
      ``min(JSON timeout, INI timeout)`` (:func:`effective_timeout_s`). Azure's
      host also stops waiting for a whole phase after about that long (two more
      polls); quiesce's per-script deadlines already end the phase by then,
      retries aside.
    * ``plugins`` names the JSON files to load, one per plugin. Without the INI
      file Azure falls back to the copy shipped with its extension, which is
      :data:`DEFAULT_PLUGINHOST`: one ScriptRunner reading
      :data:`DEFAULT_CONFIG_PATH`, capped at 1800 s.
    * ``numberOfPlugins: 0`` runs no scripts at all.
    """

    timeout_s: int = MAX_TIMEOUT_S
    plugins: tuple[PluginEntry, ...] = ()
    warnings: tuple[str, ...] = ()
    source: str = "<string>"

    def to_dict(self) -> dict[str, object]:
        """The settings in the INI's key names, plus the source and the warnings."""
        return {
            "source": self.source,
            "timeoutInSeconds": self.timeout_s,
            "numberOfPlugins": len(self.plugins),
            "plugins": [plugin.to_dict() for plugin in self.plugins],
            "warnings": list(self.warnings),
        }


#: What Azure uses when ``/etc/azure/VMSnapshotPluginHost.conf`` does not exist:
#: the ``VMSnapshotPluginHost.conf`` shipped in its extension directory.
DEFAULT_PLUGINHOST = PluginHostConfig(
    timeout_s=MAX_TIMEOUT_S,
    plugins=(PluginEntry(SCRIPT_RUNNER, "/etc/azure", DEFAULT_CONFIG_PATH),),
    source="(Azure's shipped default)",
)


def effective_timeout_s(config: PluginConfig, host: PluginHostConfig | None) -> int:
    """The per-script timeout: the JSON's ``timeoutInSeconds`` capped by the plugin host's."""
    cap = MAX_TIMEOUT_S if host is None else host.timeout_s
    return min(config.timeout_s, cap)


def load_pluginhost(
    path: str = DEFAULT_PLUGINHOST_PATH, *, read: Callable[[str], bytes] | None = None
) -> PluginHostConfig | None:
    """Read and check the optional plugin host INI; ``None`` when there is no file.

    What ``None`` means is the caller's choice; Azure would use
    :data:`DEFAULT_PLUGINHOST`. An unreadable or invalid file raises
    :class:`IncorrectPluginhostFile` naming the file and the key.
    """
    try:
        data = (read or _read_file)(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except _NotRegularFile as err:
        raise IncorrectPluginhostFile(f"{path}: {err}") from err
    except OSError as err:
        raise IncorrectPluginhostFile(f"{path}: cannot read: {err.strerror or err}") from err
    return parse_pluginhost(data, source=path)


def parse_pluginhost(data: bytes | str, source: str = "<string>") -> PluginHostConfig:
    """Parse and check plugin host INI text (UTF-8 bytes or str).

    Keys are case-insensitive, as in Azure (``configparser``). Section
    ``[pre_post]`` is required, and in it ``numberOfPlugins`` (Azure takes a
    missing one as 0 and silently runs no scripts) and, for each plugin N,
    ``pluginNameN`` (only ``ScriptRunner``: Azure imports any other name as a
    Python module, which quiesce will not), ``pluginPathN`` and an absolute
    ``pluginConfigPathN``. ``timeoutInSeconds`` is optional (default 1800) and
    must be 1..1800: Azure's silent ``min(value, 1800)`` is rejected, not copied.
    Unknown keys and sections, and plugin entries past ``numberOfPlugins``, are
    warnings.
    """
    try:
        parser = _read_ini(_decode_text(data))
        host = _pluginhost(parser)
    except _Rejected as err:
        raise IncorrectPluginhostFile(f"{source}: {err}") from None
    return PluginHostConfig(timeout_s=host[0], plugins=host[1], warnings=host[2], source=source)


# --------------------------------------------------------------------------
# reading files


class _NotRegularFile(OSError):
    """The path names a directory, a FIFO, a device...: nothing to parse."""


def _read_file(path: str) -> bytes:
    """Read at most ``MAX_CONFIG_BYTES + 1`` bytes of a regular file.

    O_NONBLOCK keeps a FIFO planted at the path from hanging the open.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegularFile(f"it is {_file_kind(mode)}, not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "an unusual file")


# --------------------------------------------------------------------------
# decoding


class _Rejected(Exception):
    """A fault found while checking; the public functions add the file name."""


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


def _decode_text(data: bytes | str) -> str:
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > MAX_CONFIG_BYTES:
        raise _Rejected(f"larger than {MAX_CONFIG_BYTES} bytes: expected a small config file")
    # A BOM is how some editors save UTF-8; it changes no meaning, so it is allowed.
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    body = data.removeprefix(_UTF8_BOM)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + len(data) - len(body)
        raise _Rejected(
            f"not UTF-8 text: byte 0x{data[offset]:02x} at offset {offset} ({err.reason})"
        ) from None


def _decode_json(text: str) -> object:
    if not text.strip():
        raise _Rejected("the file is empty: expected a JSON object")
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_pairs,
            parse_float=_parse_float,
            parse_constant=_NonFinite,
        )
    except json.JSONDecodeError as err:
        raise _Rejected(f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except RecursionError:
        raise _Rejected("invalid JSON: nested too deeply") from None
    except ValueError as err:
        # For instance an integer with more digits than Python converts; the
        # advice after ";" is about Python, not about the file.
        raise _Rejected(f"invalid JSON: {str(err).split(';')[0]}") from None


def _check_json_faults(document: object) -> None:
    """Reject duplicate keys and non-finite numbers anywhere, naming their path.

    Iterative, so a deeply nested document cannot exhaust the stack here.
    """
    stack: list[tuple[str, object]] = [("", document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _NonFinite):
            where = path or "the top level"
            raise _Rejected(f"{where} = {value.text}: expected a finite number (JSON has no NaN or Infinity)")
        children: list[tuple[str, object]] = []
        if isinstance(value, _JSONObject):
            if value.duplicate is not None:
                raise _Rejected(
                    f"duplicate key {_key_path(path, value.duplicate)}: "
                    "expected each key once (the last one would silently override the first)"
                )
            children = [(_key_path(path, key), item) for key, item in value.items()]
        elif isinstance(value, list):
            children = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        stack.extend(reversed(children))


# --------------------------------------------------------------------------
# messages


def _key_path(parent: str, key: str) -> str:
    """``parent.key``, or ``parent["odd key"]`` when the key is not a plain name."""
    if _IDENTIFIER.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{_show(key)}]"


def _show(value: object) -> str:
    """The value as JSON, cut to about 80 characters, safe to print."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    # A lone surrogate (from a "\ud800" escape) cannot be printed as UTF-8.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _bad(path: str, value: object, expected: str) -> NoReturn:
    raise _Rejected(f"{path} = {_show(value)}: expected {expected}")


def _unknown_key_hint(key: str, known: Iterable[str]) -> str:
    lowered = {name.lower(): name for name in known}
    close = lowered.get(key.lower()) or next(iter(difflib.get_close_matches(key, list(known), n=1)), None)
    return f" (did you mean {close}?)" if close else ""


# --------------------------------------------------------------------------
# values


_ABSENT = object()


def _integer(value: object, path: str, low: int, high: int) -> int:
    # bool is an int subclass: true must not count as 1.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _bad(path, value, f"an integer from {low} to {high}")
    return value


def _seconds(value: object, path: str, low: float, high: float, *, low_open: bool = False) -> float:
    """A number of seconds in ``[low, high]``, or ``(low, high]`` with ``low_open``."""
    if low_open:
        expected = f"a number of seconds greater than {low:g} and at most {high:g}"
    else:
        expected = f"a number of seconds from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        _bad(path, value, expected)
    # Compare before float(): a huge JSON integer would overflow the conversion.
    above_low = value > low if low_open else value >= low
    if not (above_low and value <= high):
        _bad(path, value, expected)
    return float(value)


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        hint = ", not a string" if isinstance(value, str) else ""
        _bad(path, value, f"true or false (a JSON boolean{hint})")
    return value


def _text(value: object, path: str, expected: str) -> str:
    """A string that can become a path or an argv entry: no NUL, no lone surrogate."""
    if not isinstance(value, str):
        _bad(path, value, expected)
    if "\x00" in value:
        _bad(path, value, f"{expected} without NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _bad(path, value, f"{expected} without unpaired surrogates")
    return value


def _absolute_path(value: object, path: str, what: str) -> str:
    expected = f"the absolute path of {what}"
    text = _text(value, path, expected)
    if not text:
        _bad(path, value, f"{expected} (it is empty)")
    if not text.startswith("/"):
        _bad(path, value, f"{expected} (starting with /)")
    return text


def _strings(value: object, path: str, expected: str, item: Callable[[object, str], str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        _bad(path, value, expected)
    return tuple(item(element, f"{path}[{index}]") for index, element in enumerate(value))


def _object(value: object, path: str, allowed: tuple[str, ...]) -> Mapping[str, object]:
    """A JSON object in our namespace: every key must be one of ``allowed``."""
    if not isinstance(value, dict):
        _bad(path, value, f"a JSON object with the keys {', '.join(allowed)}")
    for key, item in value.items():
        if key not in allowed:
            _bad(
                _key_path(path, key),
                item,
                f"one of the keys {', '.join(allowed)}; unknown keys are errors inside "
                f'"{EXTENSION_KEY}"{_unknown_key_hint(key, allowed)}',
            )
    return value


# --------------------------------------------------------------------------
# the config's sections


def _param(value: object, path: str) -> str:
    return _text(value, path, "a string")


def _params(document: Mapping[str, object], key: str) -> tuple[str, ...]:
    # Azure's ScriptRunner appends every element as it is, so the sample's
    # ["", ""] gives the script two empty arguments ($# = 2). Kept the same,
    # not dropped. Azure also str()s non-strings; here they are errors.
    value = document.get(key, _ABSENT)
    if value is _ABSENT:
        return ()
    return _strings(value, key, "a list of strings (one argument each)", _param)


def _plugin_config(document: object) -> tuple[PluginConfig, list[str]]:
    if not isinstance(document, dict):
        raise _Rejected(f"the top level is {_show(document)}: expected a JSON object")
    warnings = _unknown_top_level_keys(document)
    get = document.get
    for key, what in (("preScriptLocation", "the pre-script"), ("postScriptLocation", "the post-script")):
        if key not in document:
            raise _Rejected(f"{key} is missing: expected the absolute path of {what} (a required key)")
    app_name = get("appName", _ABSENT)
    config = PluginConfig(
        plugin_name=_text(get("pluginName", DEFAULT_PLUGIN_NAME), "pluginName", "a string"),
        pre_script=_absolute_path(get("preScriptLocation"), "preScriptLocation", "the pre-script"),
        post_script=_absolute_path(get("postScriptLocation"), "postScriptLocation", "the post-script"),
        pre_params=_params(document, "preScriptParams"),
        post_params=_params(document, "postScriptParams"),
        pre_retries=_integer(get("preScriptNoOfRetries", 0), "preScriptNoOfRetries", 0, MAX_RETRIES),
        post_retries=_integer(get("postScriptNoOfRetries", 0), "postScriptNoOfRetries", 0, MAX_RETRIES),
        timeout_s=_integer(
            get("timeoutInSeconds", DEFAULT_TIMEOUT_S), "timeoutInSeconds", MIN_TIMEOUT_S, MAX_TIMEOUT_S
        ),
        continue_on_failure=_boolean(get("continueBackupOnFailure", True), "continueBackupOnFailure"),
        fs_freeze_enabled=_boolean(get("fsFreezeEnabled", True), "fsFreezeEnabled"),
        poll_s=_integer(
            get("ScriptsExecutionPollTimeSeconds", DEFAULT_POLL_S),
            "ScriptsExecutionPollTimeSeconds",
            MIN_POLL_S,
            MAX_POLL_S,
        ),
        app_name=None if app_name is _ABSENT else _text(app_name, "appName", "a string"),
        quiesce=_extensions(get(EXTENSION_KEY, _ABSENT)),
    )
    return config, warnings


def _unknown_top_level_keys(document: Mapping[str, object]) -> list[str]:
    # Warnings, not errors: Azure ignores keys it does not know and adds new
    # ones over time. A near miss gets a hint, since Azure's keys are
    # case-sensitive and a misspelt one silently falls back to its default.
    known = (*AZURE_KEYS, EXTENSION_KEY)
    return [
        f"unknown key {_key_path('', key)} ignored{_unknown_key_hint(key, known)}; "
        f'quiesce\'s own settings go under "{EXTENSION_KEY}"'
        for key in document
        if key not in known
    ]


def _mount_pattern(value: object, path: str) -> str:
    return _absolute_path(value, path, "a mount point (or a glob)")


def _fstype(value: object, path: str) -> str:
    text = _text(value, path, "a filesystem type (or a glob)")
    if not text.strip():
        _bad(path, value, "a filesystem type (or a glob), not blank")
    return text


def _extensions(value: object) -> Extensions:
    if value is _ABSENT:
        return Extensions()
    section = _object(value, EXTENSION_KEY, EXTENSION_KEYS)

    def path(key: str) -> str:
        return f"{EXTENSION_KEY}.{key}"

    def get(key: str, default: object) -> object:
        return section.get(key, default)

    freeze_timeout = _seconds(
        get("freezeTimeoutSeconds", DEFAULT_FREEZE_TIMEOUT_S),
        path("freezeTimeoutSeconds"),
        0,
        MAX_FREEZE_TIMEOUT_S,
        low_open=True,
    )
    hook_directory = get("hookDirectory", None)
    return Extensions(
        targets=_strings(
            get("targets", []), path("targets"), "a list of absolute mount points or globs", _mount_pattern
        ),
        exclude=_strings(
            get("exclude", []), path("exclude"), "a list of absolute mount points or globs", _mount_pattern
        ),
        exclude_fstypes=_strings(
            get("excludeFstypes", []), path("excludeFstypes"), "a list of filesystem types", _fstype
        ),
        freeze_timeout_s=freeze_timeout,
        grace_s=_seconds(get("graceSeconds", DEFAULT_GRACE_S), path("graceSeconds"), 0, MAX_GRACE_S),
        retry_backoff_s=_seconds(
            get("retryBackoffSeconds", DEFAULT_RETRY_BACKOFF_S),
            path("retryBackoffSeconds"),
            0,
            MAX_RETRY_BACKOFF_S,
        ),
        hook_directory=None
        if hook_directory is None
        else _absolute_path(hook_directory, path("hookDirectory"), "a hook directory (or null)"),
        snapshot=_snapshot(get("snapshot", _ABSENT), freeze_timeout),
        preflush=_boolean(get("preflush", True), path("preflush")),
        expedite_rcu=_boolean(get("expediteRcu", False), path("expediteRcu")),
        parallel_freeze=_boolean(get("parallelFreeze", False), path("parallelFreeze")),
        loop_backing_fstypes=_strings(
            get("loopBackingFstypes", []),
            path("loopBackingFstypes"),
            "a list of filesystem types",
            _fstype,
        ),
    )


def _snapshot(value: object, freeze_timeout_s: float) -> SnapshotSpec:
    if value is _ABSENT:
        return SnapshotSpec()
    where = f"{EXTENSION_KEY}.snapshot"
    section = _object(value, where, SNAPSHOT_KEYS)
    modes = ", ".join(f'"{mode.value}"' for mode in SnapshotMode)
    if "mode" not in section:
        raise _Rejected(f"{where}.mode is missing: expected one of {modes}")
    mode_value = section["mode"]
    if not isinstance(mode_value, str) or mode_value not in {mode.value for mode in SnapshotMode}:
        _bad(f"{where}.mode", mode_value, f"one of {modes}")
    mode = SnapshotMode(mode_value)
    if mode is not SnapshotMode.COMMAND:
        for key in ("argv", "timeoutSeconds"):
            if key in section:
                _bad(f"{where}.{key}", section[key], f'no {key} with mode "{mode.value}" (only "command")')
        return SnapshotSpec(mode=mode)
    for key, what in (("argv", "a non-empty list of strings"), ("timeoutSeconds", "a number of seconds")):
        if key not in section:
            raise _Rejected(f'{where}.{key} is missing: expected {what} (required with mode "command")')
    argv = _strings(section["argv"], f"{where}.argv", "a non-empty list of strings", _param)
    if not argv:
        _bad(f"{where}.argv", section["argv"], "a non-empty list of strings")
    # The command runs as root: no PATH lookup.
    _absolute_path(argv[0], f"{where}.argv[0]", "the command to run")
    timeout = section["timeoutSeconds"]
    expected = (
        f"a number of seconds greater than 0 and less than {EXTENSION_KEY}.freezeTimeoutSeconds "
        f"({freeze_timeout_s:g}), so the command is stopped before the guardian thaws"
    )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        _bad(f"{where}.timeoutSeconds", timeout, expected)
    if not 0 < timeout < freeze_timeout_s:
        _bad(f"{where}.timeoutSeconds", timeout, expected)
    return SnapshotSpec(mode=mode, argv=argv, timeout_s=float(timeout))


# --------------------------------------------------------------------------
# the plugin host INI's contents

_SECTION = "pre_post"
_INI_TIMEOUT = "timeoutInSeconds"
_INI_COUNT = "numberOfPlugins"
_INI_ENTRY_KEYS = ("pluginName", "pluginPath", "pluginConfigPath")
_INI_ENTRY_LOWER = tuple(key.lower() for key in _INI_ENTRY_KEYS)
# No leading zeros: "pluginName01" is not plugin 1 to Azure either.
_INI_ENTRY = re.compile(r"(pluginname|pluginpath|pluginconfigpath)(0|[1-9][0-9]*)")


def _read_ini(text: str) -> configparser.ConfigParser:
    # Azure's ConfigParser: keys case-insensitive, full-line comments only.
    # Interpolation is off: a "%" in a path is a character, not a syntax error.
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.DuplicateOptionError as err:
        raise _Rejected(
            f"line {err.lineno}: [{err.section}] {err.option} appears more than once: expected each key once"
        ) from None
    except configparser.DuplicateSectionError as err:
        raise _Rejected(f"line {err.lineno}: section [{err.section}] appears more than once") from None
    except configparser.MissingSectionHeaderError as err:
        raise _Rejected(
            f"line {err.lineno}: {_show(err.line.strip())} comes before any [section] header: "
            f"expected [{_SECTION}] first"
        ) from None
    except configparser.ParsingError as err:
        lineno, line = err.errors[0]
        raise _Rejected(f"line {lineno}: cannot parse {_show(line.strip())}: expected key = value") from None
    except configparser.Error as err:
        raise _Rejected(f"not a valid INI file: {err}") from None
    return parser


def _ini_bad(key: str, value: str, expected: str) -> NoReturn:
    raise _Rejected(f"[{_SECTION}] {key} = {_show(value)}: expected {expected}")


def _ini_integer(value: str, key: str, low: int, high: int) -> int:
    # A regex rather than int() alone: int() accepts "+1", "1_0" and non-ASCII digits.
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        _ini_bad(key, value, f"an integer from {low} to {high}")
    return int(value)


def _pluginhost(parser: configparser.ConfigParser) -> tuple[int, tuple[PluginEntry, ...], tuple[str, ...]]:
    if not parser.has_section(_SECTION):
        raise _Rejected(f"no [{_SECTION}] section: expected [{_SECTION}] with {_INI_COUNT} and the plugins")
    options = dict(parser.items(_SECTION))
    timeout_text = options.get(_INI_TIMEOUT.lower())
    timeout = (
        MAX_TIMEOUT_S
        if timeout_text is None
        else _ini_integer(timeout_text, _INI_TIMEOUT, MIN_TIMEOUT_S, MAX_TIMEOUT_S)
    )
    count_text = options.get(_INI_COUNT.lower())
    if count_text is None:
        raise _Rejected(
            f"[{_SECTION}] {_INI_COUNT} is missing: expected the number of plugins "
            "(Azure would silently run no scripts)"
        )
    count = _ini_integer(count_text, _INI_COUNT, 0, MAX_PLUGINS)
    plugins = tuple(_plugin_entry(options, index) for index in range(count))
    _check_distinct(plugins)
    return timeout, plugins, tuple(_ini_warnings(parser, options, count))


def _plugin_entry(options: Mapping[str, str], index: int) -> PluginEntry:
    values: list[str] = []
    for name in _INI_ENTRY_KEYS:
        key = f"{name}{index}"
        value = options.get(key.lower())
        if value is None:
            raise _Rejected(f"[{_SECTION}] {key} is missing: expected one for each of {_INI_COUNT}")
        if not value:
            _ini_bad(key, value, "a value")
        values.append(value)
    name, path, config_path = values
    if name != SCRIPT_RUNNER:
        _ini_bad(
            f"pluginName{index}",
            name,
            f"{SCRIPT_RUNNER} (quiesce runs no Python plugins; Azure would import this name as a module)",
        )
    if not config_path.startswith("/") or "\x00" in config_path:
        _ini_bad(f"pluginConfigPath{index}", config_path, "the absolute path of a plugin config JSON file")
    return PluginEntry(name=name, path=path, config_path=config_path)


def _check_distinct(plugins: tuple[PluginEntry, ...]) -> None:
    seen: dict[str, int] = {}
    for index, plugin in enumerate(plugins):
        first = seen.setdefault(plugin.config_path, index)
        if first != index:
            _ini_bad(
                f"pluginConfigPath{index}",
                plugin.config_path,
                f"a config file not already used by plugin {first} (its scripts would run twice)",
            )


def _ini_warnings(parser: configparser.ConfigParser, options: Mapping[str, str], count: int) -> list[str]:
    warnings = [f"section [{section}] ignored" for section in parser.sections() if section != _SECTION]
    for key in options:
        entry = _INI_ENTRY.fullmatch(key)
        if entry is not None and int(entry.group(2)) >= count:
            spelled = _INI_ENTRY_KEYS[_INI_ENTRY_LOWER.index(entry.group(1))] + entry.group(2)
            warnings.append(f"[{_SECTION}] {spelled} ignored: {_INI_COUNT} is {count}")
        elif entry is None and key not in (_INI_TIMEOUT.lower(), _INI_COUNT.lower()):
            warnings.append(f"[{_SECTION}] unknown key {key} ignored")
    return warnings
