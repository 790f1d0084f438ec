"""The run: one Azure-compatible job, from its checks to its result.

:func:`quiesce.runner.run.run` checks the config and runs a
:class:`~quiesce.runner.job.Job`: the pre steps, the snapshot step and the
window around it (:mod:`~quiesce.runner.window`, through the
:mod:`~quiesce.runner.freezer` seam), the post steps, whatever signals
arrive (:mod:`~quiesce.runner.signals`, :mod:`~quiesce.runner.hold`).
``quiesce check`` (:mod:`~quiesce.runner.check`) checks all that without
running anything; :mod:`~quiesce.runner.logs` writes what a run did.
"""
