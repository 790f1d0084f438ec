"""Azure's ``/etc/azure/vmbackup.conf``: the mount points its ``MountsToSkip`` says not to freeze."""

from __future__ import annotations

from collections.abc import Callable

from quiesce.azure.paths import VMBACKUP_CONF as VMBACKUP_CONF
from quiesce.azure.text import Rejected, read_ini
from quiesce.errors import ConfigError

_SECTION = "SnapshotThread"


def read_mounts_to_skip(
    path: str = VMBACKUP_CONF, *, read: Callable[[str], bytes] | None = None
) -> tuple[str, ...]:
    """The ``MountsToSkip`` mount points of ``[SnapshotThread]`` in Azure's vmbackup.conf.

    ``read`` replaces the plain file read (quiesce passes
    :func:`quiesce.azure.permissions.read_vmbackup_conf`, which checks owner, mode
    and directories first and raises its own error). A missing file, section
    or key gives ``()``. An unreadable or unparseable file raises
    :class:`ConfigError` naming it.
    """
    try:
        if read is None:
            with open(path, "rb") as file:
                raw = file.read()
        else:
            raw = read(path)
        # utf-8-sig: a file saved by a Windows editor starts with a BOM, which
        # configparser would otherwise read as part of the first section header.
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        return ()
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from err
    try:
        parser = read_ini(text, _SECTION)
    except Rejected as err:
        raise ConfigError(f"{path} is not a valid INI file: {err}") from err
    value = parser.get(_SECTION, "MountsToSkip", fallback="")
    return tuple(item.strip() for item in value.split(",") if item.strip())
