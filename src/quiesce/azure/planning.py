"""Plans from Azure's files: ``MountsToSkip`` of vmbackup.conf, and a config's targets.

:func:`make_plan` is :func:`quiesce.engine.targets.plan_targets` plus the
mount points Azure's ``/etc/azure/vmbackup.conf`` says to skip (read only
if root alone could have written it). :func:`plan_config` plans a config's
``"quiesce"`` settings, where a named target that cannot be frozen is the
config's error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from quiesce.azure.permissions import read_vmbackup_conf
from quiesce.azure.vmbackup import VMBACKUP_CONF, read_mounts_to_skip
from quiesce.engine.plan import Plan
from quiesce.engine.targets import PathName, list_of_names, plan_targets, target_problems
from quiesce.errors import IncorrectJSONConfigFile, TargetError

if TYPE_CHECKING:  # `quiesce freeze` plans with make_plan before its first FIFREEZE: no config module
    from quiesce.azure.config import Extensions


def make_plan(
    targets: Iterable[PathName] = (),
    *,
    exclude: Iterable[PathName] = (),
    exclude_fstypes: Iterable[str] = (),
    extra_fstypes: Iterable[str] = (),
    loop_backing_fstypes: Iterable[str] = (),
    vmbackup_conf: str | None = VMBACKUP_CONF,
    mountinfo: str = "/proc/self/mountinfo",
    read_only: bool = False,
) -> Plan:
    """Plan a freeze of ``targets`` (all freezable filesystems when empty), honouring ``MountsToSkip``.

    ``vmbackup_conf`` names Azure's vmbackup.conf (None: none); its
    ``[SnapshotThread] MountsToSkip`` mount points are excluded. Named
    targets are resolved and checked as
    :func:`~quiesce.engine.targets.plan_targets` does; nothing is raised for
    a bad target here (see :func:`~quiesce.engine.targets.check_explicit`).
    ``read_only``: read-only filesystems are frozen too (``quiesce qga``, as qemu-ga).
    """
    skip = read_mounts_to_skip(vmbackup_conf, read=read_vmbackup_conf) if vmbackup_conf else ()
    return plan_targets(
        targets,
        exclude=[*list_of_names("exclude", exclude), *skip],
        exclude_fstypes=exclude_fstypes,
        extra_fstypes=extra_fstypes,
        loop_backing_fstypes=loop_backing_fstypes,
        mountinfo=mountinfo,
        read_only=read_only,
    )


def plan_config(ext: Extensions, vmbackup_conf: str | None = VMBACKUP_CONF) -> Plan:
    """The plan for a config's ``"quiesce"`` settings; TargetError if a named target cannot be frozen."""
    plan = make_plan(
        ext.targets,
        exclude=ext.exclude,
        exclude_fstypes=ext.exclude_fstypes,
        loop_backing_fstypes=ext.loop_backing_fstypes,
        vmbackup_conf=vmbackup_conf,
        read_only=ext.freeze_read_only,
    )
    problems = target_problems(plan, ext.targets)
    if problems:
        from quiesce.azure.config import EXTENSION_KEY

        raise TargetError(f"{EXTENSION_KEY}.targets: cannot freeze: " + "; ".join(problems))
    return plan


def check_config_targets(
    ext: Extensions, vmbackup_conf: str | None = VMBACKUP_CONF, source: str = "<config>"
) -> Plan:
    """:func:`plan_config` before anything runs: a bad named target is a config error (nothing runs)."""
    try:
        return plan_config(ext, vmbackup_conf)
    except TargetError as err:
        raise IncorrectJSONConfigFile(f"{source}: {err}") from err
