"""quiesce: application-consistent snapshots on Linux.

Freeze filesystems (FIFREEZE) for as short a window as the kernel allows,
with a guardian process that thaws whatever happens to the caller, and run
Azure Backup's pre/post-scripts around it.

Embedding it::

    import quiesce

    # Freeze for a snapshot you take yourself (the guardian thaws at 10 s regardless):
    try:
        with quiesce.frozen(["/var/lib/db", "/var/log/db"], timeout=10) as window:
            take_snapshot()
    except quiesce.WindowExpiredError as expired:
        discard_snapshot()  # the window ended before the block: not trusted
        print(expired, expired.report.guardian_reason)
    else:
        print(window.report.window_ns)

    # The whole Azure-compatible job, with your snapshot inside the window:
    result = quiesce.run("/etc/azure/VMSnapshotScriptPluginConfig.json", snapshot=take_snapshot)
    print(result.consistency, result.to_dict())

Nothing here keeps global state; every result is a dataclass with
``to_dict()`` for JSON. Errors derive from :class:`QuiesceError`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quiesce.azure.config import LoadedConfig, PluginConfig
    from quiesce.azure.configparse import parse_config
    from quiesce.azure.planning import make_plan as plan
    from quiesce.azure.verdict import APPLICATION, CRASH, FAILED, FILESYSTEM
    from quiesce.engine.freeze import Freeze, FreezeOptions
    from quiesce.engine.frozen import frozen
    from quiesce.engine.plan import Plan, Skipped, SkipReason, Target
    from quiesce.engine.report import FilesystemResult, FreezeReport, WindowExpiredError
    from quiesce.errors import (
        ConfigError,
        FreezeError,
        FreezeNotSupportedError,
        FreezeTimeoutError,
        FrozenByOtherError,
        IncorrectJSONConfigFile,
        LockHeldError,
        NotFrozenError,
        QuiesceError,
        ScriptError,
        TargetError,
        ThawError,
        UnsafeRunDirError,
    )
    from quiesce.runner.types import HoldAnnouncement, RunOptions, RunResult, SnapshotStep
    from quiesce.supervise.launch import Attempt
    from quiesce.supervise.scripts import ScriptResult

    #: The installed distribution's version: one source, pyproject.toml's ``version``.
    __version__: str

#: Where each public name lives: imported on first use, so that ``import quiesce.cli`` (and with
#: it ``quiesce thaw``, which runs while filesystems are frozen) loads only what it needs.
_LAZY = {
    "LoadedConfig": ("quiesce.azure.config", "LoadedConfig"),
    "PluginConfig": ("quiesce.azure.config", "PluginConfig"),
    "parse_config": ("quiesce.azure.configparse", "parse_config"),
    "plan": ("quiesce.azure.planning", "make_plan"),
    **{name: ("quiesce.azure.verdict", name) for name in ("APPLICATION", "CRASH", "FAILED", "FILESYSTEM")},
    "Freeze": ("quiesce.engine.freeze", "Freeze"),
    "FreezeOptions": ("quiesce.engine.freeze", "FreezeOptions"),
    "frozen": ("quiesce.engine.frozen", "frozen"),
    **{name: ("quiesce.engine.plan", name) for name in ("Plan", "Skipped", "SkipReason", "Target")},
    **{
        name: ("quiesce.engine.report", name)
        for name in ("FilesystemResult", "FreezeReport", "WindowExpiredError")
    },
    **{
        name: ("quiesce.errors", name)
        for name in (
            "ConfigError",
            "FreezeError",
            "FreezeNotSupportedError",
            "FreezeTimeoutError",
            "FrozenByOtherError",
            "IncorrectJSONConfigFile",
            "LockHeldError",
            "NotFrozenError",
            "QuiesceError",
            "ScriptError",
            "TargetError",
            "ThawError",
            "UnsafeRunDirError",
        )
    },
    **{
        name: ("quiesce.runner.types", name)
        for name in ("HoldAnnouncement", "RunOptions", "RunResult", "SnapshotStep")
    },
    "Attempt": ("quiesce.supervise.launch", "Attempt"),
    "ScriptResult": ("quiesce.supervise.scripts", "ScriptResult"),
}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("quiesce")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it, so later uses are plain lookups."""
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the public ones not imported yet included."""
    return sorted({*globals(), *__all__})


__all__ = [
    "APPLICATION",
    "CRASH",
    "FAILED",
    "FILESYSTEM",
    "Attempt",
    "ConfigError",
    "FilesystemResult",
    "Freeze",
    "FreezeError",
    "FreezeNotSupportedError",
    "FreezeOptions",
    "FreezeReport",
    "FreezeTimeoutError",
    "FrozenByOtherError",
    "HoldAnnouncement",
    "IncorrectJSONConfigFile",
    "LoadedConfig",
    "LockHeldError",
    "NotFrozenError",
    "Plan",
    "PluginConfig",
    "QuiesceError",
    "RunOptions",
    "RunResult",
    "ScriptError",
    "ScriptResult",
    "SkipReason",
    "Skipped",
    "Target",
    "TargetError",
    "ThawError",
    "UnsafeRunDirError",
    "WindowExpiredError",
    "__version__",
    "frozen",
    "load_config",
    "parse_config",
    "plan",
    "run",
]


def load_config(
    path: str | os.PathLike[str] = "/etc/azure/VMSnapshotScriptPluginConfig.json",
) -> LoadedConfig:
    """Read and validate Azure's plugin config, after checking its owner, mode and directories."""
    from quiesce.runner.run import load_checked_config

    return load_checked_config(os.fsdecode(path))


def run(
    config: str | os.PathLike[str] | LoadedConfig | PluginConfig | None = None,
    *,
    snapshot: SnapshotStep | None = None,
    options: RunOptions | None = None,
) -> RunResult:
    """Run the whole job once: checks, pre-script, freeze, ``snapshot()``, thaw, post-script.

    ``config`` is a config file path (``str``, ``bytes`` or a path object;
    checked and validated), an already loaded config, or None for
    ``options.config_path`` (default Azure's path). ``snapshot`` is called
    inside the frozen window; the guardian bounds it. Raises for an invalid
    config, a run directory someone but root could change
    (:class:`UnsafeRunDirError`) or a held lock, and TypeError, before
    anything runs, for arguments of the wrong kind; every other outcome is
    in the returned :class:`RunResult`.
    """
    import dataclasses

    from quiesce.azure.config import LoadedConfig, PluginConfig
    from quiesce.runner.run import run as _run
    from quiesce.runner.types import RunOptions

    if snapshot is not None and not callable(snapshot):
        raise TypeError(
            f"snapshot must be a callable (called inside the window), not {type(snapshot).__name__}"
        )
    if options is not None and not isinstance(options, RunOptions):
        raise TypeError(f"options must be a RunOptions, not {type(options).__name__}")
    opts = options or RunOptions()
    if isinstance(config, (str, bytes, os.PathLike)):
        opts = dataclasses.replace(opts, config_path=os.fsdecode(config))
        return _run(opts, snapshot=snapshot)
    if config is not None and not isinstance(config, (LoadedConfig, PluginConfig)):
        raise TypeError(
            f"config must be a path, a LoadedConfig or a PluginConfig, not {type(config).__name__}"
        )
    if isinstance(config, PluginConfig):
        config = LoadedConfig(config, (), "<api>")
    return _run(opts, config=config, snapshot=snapshot)
