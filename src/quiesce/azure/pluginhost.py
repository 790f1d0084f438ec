"""Azure's plugin host INI, ``/etc/azure/VMSnapshotPluginHost.conf``: the plugins and the timeout cap."""

from __future__ import annotations

import configparser
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from quiesce.azure.config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_PLUGINHOST_PATH,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    SCRIPT_RUNNER,
    PluginConfig,
)
from quiesce.azure.text import NotRegularFile, Rejected, decode_text, read_file, read_ini, show
from quiesce.errors import IncorrectPluginhostFile

#: ``numberOfPlugins`` in the plugin host INI.
MAX_PLUGINS = 16
_DIGITS = re.compile(r"[0-9]+")


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
        data = (read or read_file)(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except NotRegularFile as err:
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
        parser = read_ini(decode_text(data), _SECTION)
        host = _pluginhost(parser)
    except Rejected as err:
        raise IncorrectPluginhostFile(f"{source}: {err}") from None
    return PluginHostConfig(timeout_s=host[0], plugins=host[1], warnings=host[2], source=source)


_SECTION = "pre_post"
_INI_TIMEOUT = "timeoutInSeconds"
_INI_COUNT = "numberOfPlugins"
_INI_ENTRY_KEYS = ("pluginName", "pluginPath", "pluginConfigPath")
_INI_ENTRY_LOWER = tuple(key.lower() for key in _INI_ENTRY_KEYS)
# No leading zeros: "pluginName01" is not plugin 1 to Azure either.
_INI_ENTRY = re.compile(r"(pluginname|pluginpath|pluginconfigpath)(0|[1-9][0-9]*)")


def _ini_bad(key: str, value: str, expected: str) -> NoReturn:
    raise Rejected(f"[{_SECTION}] {key} = {show(value)}: expected {expected}")


def _ini_integer(value: str, key: str, low: int, high: int) -> int:
    # A regex rather than int() alone: int() accepts "+1", "1_0" and non-ASCII digits.
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        _ini_bad(key, value, f"an integer from {low} to {high}")
    return int(value)


def _pluginhost(parser: configparser.ConfigParser) -> tuple[int, tuple[PluginEntry, ...], tuple[str, ...]]:
    if not parser.has_section(_SECTION):
        raise Rejected(f"no [{_SECTION}] section: expected [{_SECTION}] with {_INI_COUNT} and the plugins")
    options = dict(parser.items(_SECTION))
    timeout_text = options.get(_INI_TIMEOUT.lower())
    timeout = (
        MAX_TIMEOUT_S
        if timeout_text is None
        else _ini_integer(timeout_text, _INI_TIMEOUT, MIN_TIMEOUT_S, MAX_TIMEOUT_S)
    )
    count_text = options.get(_INI_COUNT.lower())
    if count_text is None:
        raise Rejected(
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
            raise Rejected(f"[{_SECTION}] {key} is missing: expected one for each of {_INI_COUNT}")
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
