"""The engine: one freeze of a set of filesystems, and everything about its window.

The native bindings (:mod:`~quiesce.engine.native`), which filesystems and
in which order (:mod:`~quiesce.engine.mountinfo`,
:mod:`~quiesce.engine.selection`, :mod:`~quiesce.engine.order`,
:mod:`~quiesce.engine.targets`), the freeze itself
(:mod:`~quiesce.engine.freeze`, :mod:`~quiesce.engine.report`), and what
keeps it safe across processes: the root-only run directory
(:mod:`~quiesce.engine.trust`, :mod:`~quiesce.engine.rundir`), the lock,
the ledger and its proof (:mod:`~quiesce.engine.lock`,
:mod:`~quiesce.engine.ledger`, :mod:`~quiesce.engine.proof`), expedited RCU
(:mod:`~quiesce.engine.rcu`). Nothing here knows about Azure or scripts.
"""
