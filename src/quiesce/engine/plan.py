"""What a plan is: the filesystems to freeze, in order, and every mount left out with the reason.

:func:`quiesce.engine.selection.select` and
:func:`quiesce.engine.targets.plan_targets` make plans; a freeze
(:mod:`quiesce.engine.freeze`) takes the :class:`Target` objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from quiesce.engine.mountinfo import Mount, mount_summary


class SkipReason(StrEnum):
    """Why a mount is not frozen; each value is the string the CLI and JSON show."""

    PSEUDO = "pseudo"
    NETWORK = "network"
    FUSE = "fuse"
    READ_ONLY = "read-only"
    DUPLICATE = "duplicate"
    EXCLUDED = "excluded"
    UNSUPPORTED = "unsupported"
    NOT_INCLUDED = "not-included"
    #: On a loop device whose image lives on FUSE: its daemon can block FIFREEZE.
    FUSE_BACKED = "fuse-backed"
    #: On a loop device whose image lives on a network filesystem.
    NETWORK_BACKED = "network-backed"


@dataclass(frozen=True)
class Skipped:
    """A mount that will not be frozen, why (``reason``), and a sentence saying so."""

    mount: Mount
    reason: SkipReason
    detail: str

    def to_dict(self) -> dict[str, object]:
        """The mount's identity, the reason's value and the detail, as plain data."""
        return {**mount_summary(self.mount), "reason": self.reason.value, "detail": self.detail}


@dataclass(frozen=True)
class Target:
    """A filesystem to freeze, through the mount point of ``mount``.

    ``backing_file`` is the loop device's backing file when the filesystem sits
    on one; ``backing_target`` is the mount point of the selected target that
    holds that file (it must be frozen after this one and thawed before it).
    """

    mount: Mount
    backing_file: str | None
    backing_target: str | None

    def to_dict(self) -> dict[str, object]:
        """The mount's identity and the loop backing, as plain data."""
        return {
            **mount_summary(self.mount),
            "backing_file": self.backing_file,
            "backing_target": self.backing_target,
        }


@dataclass(frozen=True)
class Plan:
    """The outcome of :func:`select`.

    ``targets`` are in freeze order (thaw in reverse); ``skipped`` lists every
    other mount in mountinfo order; ``unmatched`` holds the include patterns,
    as given, that matched no mount at all. ``named`` and ``problems`` are
    filled by :func:`quiesce.engine.targets.plan_targets`: each named path with the path
    it resolved to, and each named path that cannot be used with a sentence
    saying why (missing, not a mount point, reached through a link a user
    could plant).
    """

    targets: tuple[Target, ...]
    skipped: tuple[Skipped, ...]
    unmatched: tuple[str, ...]
    named: tuple[tuple[str, str], ...] = ()
    problems: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, object]:
        """The whole plan as plain data."""
        return {
            "targets": [target.to_dict() for target in self.targets],
            "skipped": [skipped.to_dict() for skipped in self.skipped],
            "unmatched": list(self.unmatched),
            "named": [{"given": given, "path": path} for given, path in self.named],
            "problems": [{"given": given, "problem": why} for given, why in self.problems],
        }
