"""Where Azure Backup's files live, in a module that imports nothing.

:mod:`quiesce.azure.config` and :mod:`quiesce.azure.vmbackup` read these
files; the command line's parser names the paths in its defaults and help,
and takes them from here so that building it loads neither reader.
"""

from __future__ import annotations

#: The pre/post-script plugin config (:mod:`quiesce.azure.config`).
DEFAULT_CONFIG_PATH = "/etc/azure/VMSnapshotScriptPluginConfig.json"
#: The plugin host INI (:mod:`quiesce.azure.pluginhost`).
DEFAULT_PLUGINHOST_PATH = "/etc/azure/VMSnapshotPluginHost.conf"
#: Azure Backup's snapshot settings; ``[SnapshotThread] MountsToSkip`` is honoured.
VMBACKUP_CONF = "/etc/azure/vmbackup.conf"
