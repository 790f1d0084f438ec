"""The freeze's default limits, in a module that imports nothing.

:mod:`quiesce.engine.freeze` uses them; the command line's parser and
Azure's config read them from here, so that building a parser (for
``quiesce thaw`` above all, which runs while filesystems are frozen) does
not load the freezing machinery and the C extension.
"""

from __future__ import annotations

#: Azure's vmbackup.conf ``[SnapshotThread] timeout`` default: the longest a
#: filesystem may stay frozen before the guardian thaws it.
DEFAULT_FREEZE_TIMEOUT_S = 60.0
#: The longest one FIFREEZE call may block (it cannot be interrupted; the
#: guardian thaws the others to release it).
DEFAULT_STEP_TIMEOUT_S = 10.0
#: The longest a freeze's deadline may be: an hour, as on the command line and in the
#: config (``freezeTimeoutSeconds``). Longer would not be a guard.
MAX_TIMEOUT_S = 3600.0
