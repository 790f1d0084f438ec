"""Azure's pre/post-script plugin config: its keys, their ranges, and the typed result.

Two files, both from Azure Backup's Linux framework:

* ``/etc/azure/VMSnapshotScriptPluginConfig.json``: the scripts, their
  parameters, retries, timeout and failure policy, parsed by
  :func:`quiesce.azure.configparse.load_config` into a :class:`PluginConfig`.
  Its keys keep Azure's names and documented meanings. quiesce's own
  settings live in one nested object under the top-level key
  ``"quiesce"`` (:class:`Extensions`), so they can never clash with a key
  Azure adds later.
* ``/etc/azure/VMSnapshotPluginHost.conf``: the optional INI file that lists
  the plugins and caps their timeout (:mod:`quiesce.azure.pluginhost`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from quiesce.azure.paths import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from quiesce.azure.paths import DEFAULT_PLUGINHOST_PATH as DEFAULT_PLUGINHOST_PATH
from quiesce.engine.defaults import DEFAULT_FREEZE_TIMEOUT_S

#: The only plugin Azure ships, and the only one quiesce implements.
SCRIPT_RUNNER = "ScriptRunner"
DEFAULT_PLUGIN_NAME = SCRIPT_RUNNER

#: ``timeoutInSeconds``: Azure documents 1800 as the maximum. Below 1 a script
#: could never succeed.
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 1800
#: Azure's ScriptRunner uses 10 s for ``timeoutInSeconds`` when the key is
#: absent (the sample says 30): each script's own limit, not the freeze's.
DEFAULT_SCRIPT_TIMEOUT_S = 10

#: Retries are real re-runs here, each up to the full timeout: 10 retries of a
#: 1800 s script is already more than five hours per phase.
MAX_RETRIES = 10

#: The kernel's limits on what ``execve`` takes, for ``preScriptParams``,
#: ``postScriptParams`` and ``quiesce.snapshot.argv``: one argument is at most
#: MAX_ARG_STRLEN (32 pages, its NUL included), and all of them together,
#: each with its NUL and its 8-byte pointer, must fit a quarter of the
#: stack limit (2 MiB with the usual 8 MiB). A list past these could never
#: start: the script would fail at backup time with E2BIG, retries and all.
MAX_ARG_BYTES = 32 * 4096 - 1
MAX_ARGV_BYTES = 1024 * 1024

#: ``ScriptsExecutionPollTimeSeconds``: documented as an integer from 1 to 5,
#: default 3. quiesce sees a script's exit at once (pidfd); this only paces
#: progress reports.
MIN_POLL_S = 1
MAX_POLL_S = 5
DEFAULT_POLL_S = 3

#: ``quiesce.freezeTimeoutSeconds``: the guardian thaws after this long. The
#: default (:data:`quiesce.engine.freeze.DEFAULT_FREEZE_TIMEOUT_S`, 60 s) is
#: Azure's own auto-thaw (``[SnapshotThread] timeout`` in vmbackup.conf).
MAX_FREEZE_TIMEOUT_S = 3600.0
#: The shortest ``quiesce.freezeTimeoutSeconds`` and ``quiesce.snapshot.timeoutSeconds``:
#: a millisecond. A shorter one is a typo, and one under a nanosecond would
#: vanish in the conversion to the guardian's nanoseconds.
MIN_FREEZE_TIMEOUT_S = 0.001
#: ``quiesce.graceSeconds``: SIGTERM to SIGKILL. A longer grace would be a
#: second timeout in disguise.
DEFAULT_GRACE_S = 5.0
MAX_GRACE_S = 60.0
#: ``quiesce.retryBackoffSeconds``: pause between a failed attempt and the next.
DEFAULT_RETRY_BACKOFF_S = 0.0
MAX_RETRY_BACKOFF_S = 300.0

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
        millisecond instead of tens. On by default; where the knob cannot be
        written the window runs without it and the report says why. See
        :mod:`quiesce.engine.rcu`.
    ``parallel_freeze``
        Freeze (and thaw) independent filesystems at once, one thread each.
        On by default.
    ``loop_backing_fstypes``
        Filesystem types (or globs) accepted under a loop device's image. A
        filesystem whose image lives on FUSE or a network filesystem is
        skipped unless its type is listed here (the FUSE daemon or the
        network could block its FIFREEZE).
    ``freeze_read_only``
        Freeze read-only filesystems too. Not a key of the JSON: ``quiesce
        qga`` sets it, since qemu-ga freezes (and counts) them.
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
    expedite_rcu: bool = True
    parallel_freeze: bool = True
    loop_backing_fstypes: tuple[str, ...] = ()
    freeze_read_only: bool = False

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
    timeout_s: int = DEFAULT_SCRIPT_TIMEOUT_S
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
