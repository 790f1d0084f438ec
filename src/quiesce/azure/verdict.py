"""A run's result class and error names, by Azure's documented rules (REFERENCE.md 1.3, 1.4).

:func:`classify` is the one place the rules live; README's result table says
the same in words:

- application-consistent: every script and hook succeeded (pre, post and
  session hooks), the snapshot step ran and succeeded, and with
  ``fsFreezeEnabled`` the freeze held from before the step to after it;
- file-system-consistent: the snapshot was taken inside a freeze that held,
  but a script or hook failed, and ``continueBackupOnFailure`` is true;
- crash-consistent: the snapshot was taken without a freeze that held
  (``fsFreezeEnabled`` false and a script or hook failed; or the freeze
  failed, or was cut short by the guardian or someone else's thaw), and
  ``continueBackupOnFailure`` is true;
- failed: no trusted snapshot; or any failure with ``continueBackupOnFailure``
  false.
"""

from __future__ import annotations

from dataclasses import dataclass

APPLICATION = "application-consistent"
FILESYSTEM = "file-system-consistent"
CRASH = "crash-consistent"
FAILED = "failed"

#: Names and codes for freeze problems (REFERENCE.md 1.4: 121/122/123).
FREEZE_FAILED = ("FsFreezeFailed", 121)
FREEZE_TIMEOUT = ("FsFreezeTimeout", 122)
#: quiesce's own names, without a code: the snapshot step gave no trusted snapshot;
#: an error of quiesce's own between the pre and the post steps (recorded; the post steps ran).
SNAPSHOT_FAILED = ("SnapshotFailed", None)
RUN_ERROR = ("RunError", None)
#: ``RunOptions.before_freeze`` raised: the window was abandoned before the first FIFREEZE.
FREEZE_ABORTED = ("FreezeAborted", None)

#: Better results rank higher.
RANK = {FAILED: 0, CRASH: 1, FILESYSTEM: 2, APPLICATION: 3}


@dataclass(frozen=True)
class Outcomes:
    """What happened in each step, for :func:`classify`."""

    pre_ok: bool  # the pre-script, every pre hook, and every session hook until the thaw
    freeze_enabled: bool
    froze: bool  # frozen, and thawed by quiesce itself after the snapshot step ended
    snapshot_taken: bool  # the snapshot step ran, succeeded, and is trusted
    post_ok: bool  # every post hook, session hook release and the post-script
    continue_on_failure: bool


def classify(o: Outcomes) -> str:
    """The result class of a run, by Azure's documented rules (see the module's docstring)."""
    if not o.snapshot_taken:
        return FAILED
    scripts_ok = o.pre_ok and o.post_ok
    freeze_ok = o.froze or not o.freeze_enabled
    if scripts_ok and freeze_ok:
        return APPLICATION
    if not o.continue_on_failure:
        return FAILED
    return FILESYSTEM if o.freeze_enabled and o.froze else CRASH
