"""Azure Backup's formats and rules, read unchanged and checked strictly.

The plugin config JSON (:mod:`~quiesce.azure.config`,
:mod:`~quiesce.azure.configparse`), the plugin host INI
(:mod:`~quiesce.azure.pluginhost`), vmbackup.conf's ``MountsToSkip``
(:mod:`~quiesce.azure.vmbackup`, :mod:`~quiesce.azure.planning`), who may
have written those files (:mod:`~quiesce.azure.permissions`), and the
result classes and error names of a run (:mod:`~quiesce.azure.verdict`).
"""
