"""``quiesce bench``: what a freeze costs, measured on real filesystems.

Every repetition is a whole production freeze (:class:`quiesce.engine.freeze.Freeze`:
lock, ledger, guardian armed, pre-flush unless disabled) whose window is one
native ``cycle()``: FIFREEZE every target, then FITHAW them at once. The
figures come from the freeze report's native timestamps.

:mod:`~quiesce.bench.runner` runs the repetitions,
:mod:`~quiesce.bench.helpers` the load and the observer in helper processes
(never in the process that freezes and thaws: it must not touch a target
while it is frozen), :mod:`~quiesce.bench.stats` summarises (nearest-rank
percentiles, every figure a measured value), :mod:`~quiesce.bench.results`
holds the plain data, :mod:`~quiesce.bench.plot` draws ``--plot``'s pictures
(matplotlib, imported only when drawing), and :mod:`~quiesce.bench.command`
is the subcommand.
"""
