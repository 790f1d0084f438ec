"""Parsing Azure's plugin config strictly: every key typed, ranged and named when wrong.

Where Azure's code is lenient, quiesce is strict, because a config that is
silently reinterpreted is a config that lies: the string ``"false"`` is not
true, ``3600`` seconds is not quietly cut to 1800, a duplicate key is not
resolved by taking the last one, and ``NaN`` is not a number. Every rejection
raises :class:`~quiesce.errors.IncorrectJSONConfigFile` with a message naming
the file, the key as a JSON path (``quiesce.snapshot.argv[2]``), the value and
what was expected. Unknown top-level keys are only reported as warnings:
Azure adds keys over time and ignores the ones it does not know.

Nothing here checks owners or modes: the permission checks
(:mod:`quiesce.azure.permissions`) open the file once, check the descriptor,
and hand the bytes they read to :func:`parse_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from quiesce.azure.config import (
    AZURE_KEYS,
    DEFAULT_CONFIG_PATH,
    DEFAULT_GRACE_S,
    DEFAULT_PLUGIN_NAME,
    DEFAULT_POLL_S,
    DEFAULT_RETRY_BACKOFF_S,
    DEFAULT_SCRIPT_TIMEOUT_S,
    EXTENSION_KEY,
    EXTENSION_KEYS,
    MAX_ARG_BYTES,
    MAX_ARGV_BYTES,
    MAX_FREEZE_TIMEOUT_S,
    MAX_GRACE_S,
    MAX_POLL_S,
    MAX_RETRIES,
    MAX_RETRY_BACKOFF_S,
    MAX_TIMEOUT_S,
    MIN_FREEZE_TIMEOUT_S,
    MIN_POLL_S,
    MIN_TIMEOUT_S,
    SNAPSHOT_KEYS,
    Extensions,
    LoadedConfig,
    PluginConfig,
    SnapshotMode,
    SnapshotSpec,
)
from quiesce.azure.text import (
    NotRegularFile,
    Rejected,
    bad,
    check_json_faults,
    decode_json,
    decode_text,
    key_path,
    read_file,
    show,
    unknown_key_hint,
)
from quiesce.engine.defaults import DEFAULT_FREEZE_TIMEOUT_S
from quiesce.errors import ConfigNotFoundError, IncorrectJSONConfigFile


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
        data = (read or read_file)(path)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise ConfigNotFoundError(f"{path}: no plugin config file ({err.strerror})") from err
    except NotRegularFile as err:
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
        document = decode_json(decode_text(data))
        check_json_faults(document)
        config, warnings = _plugin_config(document)
    except Rejected as err:
        raise IncorrectJSONConfigFile(f"{source}: {err}") from None
    return LoadedConfig(config=config, warnings=tuple(warnings), source=source)


# --------------------------------------------------------------------------
# values


_ABSENT = object()


def _integer(value: object, path: str, low: int, high: int) -> int:
    """A whole number in ``[low, high]``, however JSON spells it.

    JSON has one number type: ``30``, ``30.0`` and ``3e1`` are the same
    number (JSON Schema's "integer" accepts all three), and Azure's Python
    code uses any of them unchanged. A fraction (``30.5``) is no count of
    retries or whole seconds: refused, not rounded.
    """
    expected = f"an integer from {low} to {high}"
    # bool is an int subclass: true must not count as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        bad(path, value, expected)
    if isinstance(value, float) and not value.is_integer():
        bad(path, value, f"{expected} (a whole number, not a fraction)")
    number = int(value)
    if not low <= number <= high:
        bad(path, value, expected)
    return number


def _seconds(value: object, path: str, low: float, high: float) -> float:
    """A number of seconds in ``[low, high]``."""
    expected = f"a number of seconds from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        bad(path, value, expected)
    # Compare before float(): a huge JSON integer would overflow the conversion.
    if not low <= value <= high:
        bad(path, value, expected)
    return float(value)


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        hint = ", not a string" if isinstance(value, str) else ""
        bad(path, value, f"true or false (a JSON boolean{hint})")
    return value


def _text(value: object, path: str, expected: str) -> str:
    """A string that can become a path or an argv entry: no NUL, no lone surrogate."""
    if not isinstance(value, str):
        bad(path, value, expected)
    if "\x00" in value:
        bad(path, value, f"{expected} without NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        bad(path, value, f"{expected} without unpaired surrogates")
    return value


def _absolute_path(value: object, path: str, what: str) -> str:
    expected = f"the absolute path of {what}"
    text = _text(value, path, expected)
    if not text:
        bad(path, value, f"{expected} (it is empty)")
    if not text.startswith("/"):
        bad(path, value, f"{expected} (starting with /)")
    return text


def _strings(value: object, path: str, expected: str, item: Callable[[object, str], str]) -> tuple[str, ...]:
    if not isinstance(value, list):
        bad(path, value, expected)
    return tuple(item(element, f"{path}[{index}]") for index, element in enumerate(value))


def _object(value: object, path: str, allowed: tuple[str, ...]) -> Mapping[str, object]:
    """A JSON object in our namespace: every key must be one of ``allowed``."""
    if not isinstance(value, dict):
        bad(path, value, f"a JSON object with the keys {', '.join(allowed)}")
    for key, item in value.items():
        if key not in allowed:
            bad(
                key_path(path, key),
                item,
                f"one of the keys {', '.join(allowed)}; unknown keys are errors inside "
                f'"{EXTENSION_KEY}"{unknown_key_hint(key, allowed)}',
            )
    return value


# --------------------------------------------------------------------------
# the config's sections


def _param(value: object, path: str) -> str:
    text = _text(value, path, "a string")
    if len(text.encode("utf-8")) > MAX_ARG_BYTES:
        bad(path, value, f"a string of at most {MAX_ARG_BYTES} bytes (the kernel's limit for one argument)")
    return text


def _argv(value: object, path: str, expected: str) -> tuple[str, ...]:
    """A list of arguments for one ``execve``: each, and all together, within the kernel's limits."""
    args = _strings(value, path, expected, _param)
    # What execve counts: each string with its NUL, and a pointer to it.
    size = sum(len(arg.encode("utf-8")) + 1 + 8 for arg in args)
    if size > MAX_ARGV_BYTES:
        raise Rejected(
            f"{path} = {show(value)}: expected arguments that fit one execve: {len(args)} of them take"
            f" {size} bytes with their NULs and pointers, more than {MAX_ARGV_BYTES}"
        )
    return args


def _params(document: Mapping[str, object], key: str) -> tuple[str, ...]:
    # Azure's ScriptRunner appends every element as it is, so the sample's
    # ["", ""] gives the script two empty arguments ($# = 2). Kept the same,
    # not dropped. Azure also str()s non-strings; here they are errors.
    value = document.get(key, _ABSENT)
    if value is _ABSENT:
        return ()
    return _argv(value, key, "a list of strings (one argument each)")


def _plugin_config(document: object) -> tuple[PluginConfig, list[str]]:
    if not isinstance(document, dict):
        raise Rejected(f"the top level is {show(document)}: expected a JSON object")
    warnings = _unknown_top_level_keys(document)
    get = document.get
    for key, what in (("preScriptLocation", "the pre-script"), ("postScriptLocation", "the post-script")):
        if key not in document:
            raise Rejected(f"{key} is missing: expected the absolute path of {what} (a required key)")
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
            get("timeoutInSeconds", DEFAULT_SCRIPT_TIMEOUT_S),
            "timeoutInSeconds",
            MIN_TIMEOUT_S,
            MAX_TIMEOUT_S,
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
        f"unknown key {key_path('', key)} ignored{unknown_key_hint(key, known)}; "
        f'quiesce\'s own settings go under "{EXTENSION_KEY}"'
        for key in document
        if key not in known
    ]


def _mount_pattern(value: object, path: str) -> str:
    return _absolute_path(value, path, "a mount point (or a glob)")


def _fstype(value: object, path: str) -> str:
    text = _text(value, path, "a filesystem type (or a glob)")
    if not text.strip():
        bad(path, value, "a filesystem type (or a glob), not blank")
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
        MIN_FREEZE_TIMEOUT_S,
        MAX_FREEZE_TIMEOUT_S,
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
        expedite_rcu=_boolean(get("expediteRcu", True), path("expediteRcu")),
        parallel_freeze=_boolean(get("parallelFreeze", True), path("parallelFreeze")),
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
        raise Rejected(f"{where}.mode is missing: expected one of {modes}")
    mode_value = section["mode"]
    if not isinstance(mode_value, str) or mode_value not in {mode.value for mode in SnapshotMode}:
        bad(f"{where}.mode", mode_value, f"one of {modes}")
    mode = SnapshotMode(mode_value)
    if mode is not SnapshotMode.COMMAND:
        for key in ("argv", "timeoutSeconds"):
            if key in section:
                bad(f"{where}.{key}", section[key], f'no {key} with mode "{mode.value}" (only "command")')
        return SnapshotSpec(mode=mode)
    for key, what in (("argv", "a non-empty list of strings"), ("timeoutSeconds", "a number of seconds")):
        if key not in section:
            raise Rejected(f'{where}.{key} is missing: expected {what} (required with mode "command")')
    argv = _argv(section["argv"], f"{where}.argv", "a non-empty list of strings")
    if not argv:
        bad(f"{where}.argv", section["argv"], "a non-empty list of strings")
    # The command runs as root: no PATH lookup.
    _absolute_path(argv[0], f"{where}.argv[0]", "the command to run")
    timeout = section["timeoutSeconds"]
    expected = (
        f"a number of seconds from {MIN_FREEZE_TIMEOUT_S:g} and less than "
        f"{EXTENSION_KEY}.freezeTimeoutSeconds ({freeze_timeout_s:g}), so the command is stopped "
        "before the guardian thaws"
    )
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        bad(f"{where}.timeoutSeconds", timeout, expected)
    if not MIN_FREEZE_TIMEOUT_S <= timeout < freeze_timeout_s:
        bad(f"{where}.timeoutSeconds", timeout, expected)
    return SnapshotSpec(mode=mode, argv=argv, timeout_s=float(timeout))
