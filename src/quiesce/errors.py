"""quiesce's exceptions.

Every exception quiesce raises derives from :class:`QuiesceError`. Errors that
come from the operating system also derive from :class:`OSError`, so ``errno``
and ``filename`` survive for callers that inspect them. Where Azure's
pre/post-script framework documents a name for an error, the exception carries
it in ``azure_name`` (and Azure's numeric code in ``azure_code``).
"""

from __future__ import annotations

import errno as _errno
import os


class QuiesceError(Exception):
    """Base class of every error quiesce raises."""

    azure_name: str | None = None
    azure_code: int | None = None


class SandboxError(RuntimeError):
    """The sandbox could not be built (missing tool, no loop device, not root).

    Defined here (and re-exported by :mod:`quiesce.sandbox`) so that the
    command line can catch it without importing the sandbox's machinery.
    """


class ConfigError(QuiesceError):
    """A configuration file or option is invalid; nothing was run or frozen."""


class MountinfoError(QuiesceError):
    """``/proc/self/mountinfo`` (or text in its format) could not be parsed."""


class TargetError(QuiesceError):
    """A requested freeze target cannot be used (not a mount point, not freezable)."""


class LockHeldError(QuiesceError):
    """Another quiesce process holds the freeze lock."""

    def __init__(self, message: str, holder_pid: int | None = None) -> None:
        super().__init__(message)
        self.holder_pid = holder_pid


class LedgerError(QuiesceError):
    """The ledger under ``/run/quiesce`` could not be read, written, or trusted."""


class UnsafeRunDirError(QuiesceError):
    """A directory quiesce would read or write as root can be changed by someone but root.

    Its run directory (lock, ledger, reports, notify sockets) or the
    directory of a ``--metrics`` file: owned by another user, writable by
    group or others, or below a directory that is.
    """


class UntrustedFileError(QuiesceError):
    """A file quiesce reads back from its run directory is not provably its own.

    Not a regular file, a symlink, not owned by root, readable or writable
    by group or others, or hard-linked: its contents are not acted on.
    """


class QuiesceOSError(QuiesceError, OSError):
    """An operating-system error during a named step on a named path."""

    def __init__(self, err: int, step: str, path: str | None = None) -> None:
        message = f"{step}: {os.strerror(err)}"
        if path is None:
            OSError.__init__(self, err, message)
        else:
            OSError.__init__(self, err, message, path)
        self.step = step

    def __str__(self) -> str:
        where = f" on {self.filename}" if self.filename is not None else ""
        err = self.errno or 0
        code = _errno.errorcode.get(err, str(err))
        return f"{self.step}{where} failed: {os.strerror(err)} ({code})"


class FreezeError(QuiesceOSError):
    """FIFREEZE failed on a filesystem; the ones frozen before it were thawed."""

    azure_code = 121


class FrozenByOtherError(FreezeError):
    """FIFREEZE returned EBUSY: someone else froze this filesystem.

    quiesce never thaws a filesystem it did not freeze.
    """


class FreezeNotSupportedError(FreezeError):
    """FIFREEZE returned EOPNOTSUPP: this filesystem type cannot be frozen."""


class FreezeTimeoutError(FreezeError):
    """A FIFREEZE call blocked past its deadline; the guardian thawed the rest."""

    azure_code = 122


class ThawError(QuiesceOSError):
    """FITHAW failed on a filesystem quiesce froze. Never swallowed."""


class NotFrozenError(ThawError):
    """FITHAW returned EINVAL: the filesystem was not frozen (someone thawed it)."""


class GuardianError(QuiesceOSError):
    """The guardian process could not be armed or did not answer."""


# -- Azure-compatible configuration and script errors ---------------------------


class ConfigNotFoundError(ConfigError):
    """The plugin config file does not exist (Azure: plugin config not found)."""

    azure_name = "IncorrectJSONConfigFile"
    azure_code = 316


class ConfigPermissionError(ConfigError):
    """The plugin config file's owner or mode is unsafe (Azure: 317)."""

    azure_name = "IncorrectJSONConfigFile"
    azure_code = 317


class IncorrectJSONConfigFile(ConfigError):
    """The JSON config is invalid: bad JSON, a missing key, a wrong type or range."""

    azure_name = "IncorrectJSONConfigFile"
    azure_code = 305


class IncorrectPluginhostFile(ConfigError):
    """``VMSnapshotPluginHost.conf`` is unreadable or invalid."""

    azure_name = "IncorrectPluginhostFile"
    azure_code = 304


class VmbackupConfError(ConfigError):
    """Azure's ``vmbackup.conf`` (its ``MountsToSkip`` steers the freeze) is unsafe or unreadable."""


#: Azure's names and codes per phase: (pre, post).
_SCRIPT_ERRORS: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {
    "failed": (("Pre-ScriptExecutionFailed", 300), ("Post-ScriptExecutionFailed", 301)),
    "not-found": (("Pre-ScriptNotFound", 302), ("Post-ScriptNotFound", 303)),
    "permission": (
        ("InsufficientPermissionforPre-Script", 306),
        ("InsufficientPermissionforPost-Script", 307),
    ),
    "timeout": (("Pre-ScriptTimeout", 308), ("Post-ScriptTimeout", 309)),
}


class ScriptError(QuiesceError):
    """A pre- or post-script problem; ``phase`` is "pre" or "post"."""

    kind = "failed"

    def __init__(self, message: str, phase: str) -> None:
        if phase not in ("pre", "post"):
            raise ValueError(f"phase must be 'pre' or 'post', not {phase!r}")
        super().__init__(message)
        self.phase = phase
        name, code = _SCRIPT_ERRORS[self.kind][0 if phase == "pre" else 1]
        self.azure_name = name
        self.azure_code = code


class ScriptExecutionFailed(ScriptError):
    """The script exited non-zero (or by a signal) on its last attempt."""

    kind = "failed"


class ScriptNotFound(ScriptError):
    """No file at the script's location."""

    kind = "not-found"


class ScriptPermissionError(ScriptError):
    """The script's owner, mode, parent directories or type are unsafe."""

    kind = "permission"


class ScriptTimeout(ScriptError):
    """The script ran past its timeout on its last attempt (and was killed)."""

    kind = "timeout"
