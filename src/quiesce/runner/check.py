"""``quiesce check``: everything ``quiesce run`` would check, and the plan, without running anything.

A typo in a script path, a script saved with Windows line endings, an
unsafe hook directory or a target that matches no filesystem is otherwise
found by a real run, at backup time, after the pre-script already ran. This
module checks, in the order a run would meet them: the config (owner, mode,
directories, every key), the plugin host INI, both scripts (the same checks
as a run, plus whether their ``#!`` interpreter can start), the hook
directory and every hook in it, the snapshot command, and the freeze plan
(what would be frozen, in which order, what is skipped and why). Nothing is
run, nothing is frozen, no lock is taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from quiesce.azure.config import PluginConfig, SnapshotMode
from quiesce.azure.planning import plan_config
from quiesce.azure.pluginhost import effective_timeout_s
from quiesce.azure.vmbackup import VMBACKUP_CONF
from quiesce.engine.plan import Plan
from quiesce.errors import QuiesceError, ScriptError, TargetError
from quiesce.runner.run import load_checked_config, load_checked_pluginhost
from quiesce.supervise import shebang
from quiesce.supervise.checked import open_script
from quiesce.supervise.hookdir import DEFAULT_HOOK_DIR, discover
from quiesce.supervise.snapshot_command import unsafe_command


@dataclass(frozen=True)
class Finding:
    """One thing checked: what it is, where, whether it passed, and a sentence."""

    what: str
    path: str | None
    ok: bool
    message: str
    error_name: str | None = None
    error_code: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "what": self.what,
            "path": self.path,
            "ok": self.ok,
            "message": self.message,
            "error_name": self.error_name,
            "error_code": self.error_code,
        }


@dataclass
class CheckReport:
    """Everything :func:`check_setup` found; ``ok`` when a run would start with nothing wrong."""

    config_source: str
    findings: list[Finding] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None
    fs_freeze_enabled: bool = True
    timeout_s: int | None = None

    @property
    def ok(self) -> bool:
        """No finding failed."""
        return all(f.ok for f in self.findings)

    @property
    def problems(self) -> list[Finding]:
        """The findings that failed, in the order a run meets them."""
        return [f for f in self.findings if not f.ok]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        first = self.problems[0] if self.problems else None
        return {
            "ok": self.ok,
            "config_source": self.config_source,
            "findings": [f.to_dict() for f in self.findings],
            "warnings": list(self.warnings),
            "fs_freeze_enabled": self.fs_freeze_enabled,
            "timeout_s": self.timeout_s,
            "plan": None if self.plan is None else self.plan.to_dict(),
            "error_name": None if first is None else first.error_name,
            "error_code": None if first is None else first.error_code,
        }


def _failed(what: str, path: str | None, err: QuiesceError) -> Finding:
    return Finding(what, path, False, str(err), err.azure_name, err.azure_code)


def check_setup(
    config_path: str,
    pluginhost_path: str | None,
    vmbackup_conf: str | None = VMBACKUP_CONF,
) -> CheckReport:
    """Check a run's whole setup without running or freezing anything.

    Never raises for what it checks: each problem is a failed :class:`Finding`.
    A config that cannot be read or parsed ends the check there (nothing else
    can be known without it).
    """
    report = CheckReport(config_source=config_path)
    try:
        loaded = load_checked_config(config_path)
    except QuiesceError as err:
        report.findings.append(_failed("config", config_path, err))
        return report
    cfg = loaded.config
    report.warnings.extend(loaded.warnings)
    report.fs_freeze_enabled = cfg.fs_freeze_enabled
    report.findings.append(
        Finding("config", config_path, True, "owner, mode, directories and keys are valid")
    )
    host = None
    if pluginhost_path:
        try:
            host = load_checked_pluginhost(pluginhost_path)
        except QuiesceError as err:
            report.findings.append(_failed("plugin host", pluginhost_path, err))
        else:
            said = "valid" if host is not None else "absent (optional)"
            report.findings.append(Finding("plugin host", pluginhost_path, True, said))
            if host is not None:
                report.warnings.extend(host.warnings)
    report.timeout_s = effective_timeout_s(cfg, host)
    for phase, path in (("pre", cfg.pre_script), ("post", cfg.post_script)):
        report.findings.append(_check_script(f"{phase}-script", path, phase))
    _check_hooks(report, cfg.quiesce.hook_directory or DEFAULT_HOOK_DIR)
    spec = cfg.quiesce.snapshot
    if spec.mode is SnapshotMode.COMMAND:
        report.findings.append(_check_command(spec.argv[0]))
    if cfg.fs_freeze_enabled:
        _check_plan(report, cfg, vmbackup_conf)
    return report


def _check_script(what: str, path: str, phase: str) -> Finding:
    try:
        script = open_script(path, phase)
    except ScriptError as err:
        return _failed(what, path, err)
    with script:
        head = os.pread(script.fd, shebang.SHEBANG_BYTES, 0)
    problem = shebang.interpreter_problem(head, path)
    if problem is not None:
        name, code = (
            ("Pre-ScriptExecutionFailed", 300) if phase == "pre" else ("Post-ScriptExecutionFailed", 301)
        )
        return Finding(what, path, False, f"{path} cannot start: {problem}", name, code)
    runs = f"#!{script.interpreter}" if script.has_shebang else "no #!: runs with /bin/sh"
    return Finding(what, path, True, f"owner, mode and directories are safe; {runs}")


def _check_hooks(report: CheckReport, directory: str) -> None:
    found = discover(directory)
    report.warnings.extend(found.warnings)
    if found.error is not None:
        report.findings.append(Finding("hook directory", directory, False, found.error))
        return
    if not os.path.isdir(directory):
        return  # no hook directory: nothing to run, nothing wrong
    names = ", ".join(h.name for h in found.hooks) or "no hooks"
    report.findings.append(Finding("hook directory", directory, True, names))
    for hook in found.hooks:
        report.findings.append(_check_script("session hook" if hook.session else "hook", hook.path, "pre"))


def _check_command(path: str) -> Finding:
    what = "snapshot command"
    unsafe = unsafe_command(path)
    if unsafe is not None:
        return Finding(what, path, False, f"{path} {unsafe}", "SnapshotFailed")
    problem = shebang.interpreter_problem(shebang.read_head(path), path)
    if problem is not None:
        return Finding(what, path, False, f"{path} cannot start: {problem}", "SnapshotFailed")
    return Finding(what, path, True, "executable")


def _check_plan(report: CheckReport, cfg: PluginConfig, vmbackup_conf: str | None) -> None:
    try:
        report.plan = plan_config(cfg.quiesce, vmbackup_conf)
    except TargetError as err:
        # What run() says for it: the config's targets are wrong.
        report.findings.append(Finding("targets", None, False, str(err), "IncorrectJSONConfigFile", 305))
        return
    except QuiesceError as err:  # vmbackup.conf unsafe or unreadable, mountinfo unreadable
        report.findings.append(_failed("targets", vmbackup_conf, err))
        return
    if not report.plan.targets:
        report.findings.append(Finding("targets", None, False, "nothing to freeze: no freezable filesystem"))
        return
    shown = ", ".join(t.mount.mount_point for t in report.plan.targets)
    report.findings.append(Finding("targets", None, True, f"would freeze, in order: {shown}"))
