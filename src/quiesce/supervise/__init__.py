"""Supervision: the processes quiesce runs, from their checks to their end.

A script or hook is checked before it runs (:mod:`~quiesce.supervise.checked`,
:mod:`~quiesce.supervise.shebang`), started the one way every child is
started (:mod:`~quiesce.supervise.launch`: its own cgroup
(:mod:`~quiesce.supervise.cgroups`), session, pipes and environment),
supervised to its deadline by the native layer, retried
(:mod:`~quiesce.supervise.scripts`) and killed with its whole tree. The hook
directory (:mod:`~quiesce.supervise.hookdir`, :mod:`~quiesce.supervise.hooks`),
session hooks and their notify sockets (:mod:`~quiesce.supervise.session`,
:mod:`~quiesce.supervise.notify`), and the snapshot command
(:mod:`~quiesce.supervise.snapshot_command`) live here too.
"""
