"""The fleet: one application-consistent cut across many machines, coordinated on etcd.

Each machine runs ``quiesce agent``; ``quiesce fleet run`` drives one run
through etcd keys, leases, transactions and watches (``protocol`` has the key
layout and the step rules, ``verdict`` the verdict; ``store`` is the etcd access through etcd3gw;
``agent`` and ``coordinator`` the two sides). Each node's own guardian
deadline is the primary safety; the verdict is proved from etcd revisions,
never from clocks across machines.

Behind the optional extra ``quiesce[fleet]`` (etcd3gw; pyroute2 for
``quiesce fleet demo``): importing this package needs neither.
"""

from __future__ import annotations

from quiesce.errors import QuiesceError


class FleetError(QuiesceError):
    """A fleet command could not do its job (etcd unreachable, refused, a bad name)."""


__all__ = ["FleetError"]
