"""The run's rules as properties: the real scheduler, driven by made-up attempts, freezes and snapshots.

``quiesce.runner.run.run`` runs unchanged; only its two seams are replaced: a
``ScriptRunner`` whose checks and attempts come from a drawn plan, and a
``Freezer`` whose freeze, snapshot command and hold release do what the
plan says. Stop signals are real (``signal.raise_signal`` with the run's own
handlers installed). :func:`model` states README's rules independently:
attempts per script, which steps run, the result class, the exit code, the
Azure error name, and what the post-script is told.
"""

from __future__ import annotations

import errno
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.azure.config import Extensions, LoadedConfig, PluginConfig, SnapshotMode, SnapshotSpec
from quiesce.azure.verdict import APPLICATION, CRASH, FAILED, FILESYSTEM, RANK
from quiesce.cli.run import run_exit
from quiesce.engine.mountinfo import parse_mountinfo
from quiesce.engine.plan import Target
from quiesce.engine.report import FilesystemResult, FreezeReport
from quiesce.errors import (
    FreezeTimeoutError,
    FrozenByOtherError,
    LedgerError,
    ScriptNotFound,
    ScriptPermissionError,
    ThawError,
)
from quiesce.runner import job as run_job
from quiesce.runner.run import run
from quiesce.runner.types import RunOptions
from quiesce.supervise.checked import CheckedScript
from quiesce.supervise.hookdir import Hook, HookDirectory
from quiesce.supervise.launch import Attempt
from quiesce.supervise.scripts import ScriptRunner

MAX_RETRIES = 3
PRE, POST = "/plan/pre.sh", "/plan/post.sh"
HOOK_DIR = "/plan/hooks.d"
MOUNTINFO = "30 1 8:1 / /data rw - xfs /dev/sda1 rw\n31 1 8:2 / /logs rw - ext4 /dev/sda2 rw\n"
TARGETS = [Target(m, None, None) for m in parse_mountinfo(MOUNTINFO)]
NAMES = {  # Azure's names and codes by (phase, status)
    ("pre", "failed"): ("Pre-ScriptExecutionFailed", 300),
    ("post", "failed"): ("Post-ScriptExecutionFailed", 301),
    ("pre", "not-found"): ("Pre-ScriptNotFound", 302),
    ("post", "not-found"): ("Post-ScriptNotFound", 303),
    ("pre", "permission"): ("InsufficientPermissionforPre-Script", 306),
    ("post", "permission"): ("InsufficientPermissionforPost-Script", 307),
    ("pre", "timeout"): ("Pre-ScriptTimeout", 308),
    ("post", "timeout"): ("Post-ScriptTimeout", 309),
}
FREEZE_FAILED, FREEZE_TIMEOUT = ("FsFreezeFailed", 121), ("FsFreezeTimeout", 122)
SNAPSHOT_FAILED, INTERRUPTED = ("SnapshotFailed", None), ("RunInterrupted", None)

# -- the plan ---------------------------------------------------------------------------------

#: One attempt: exits 0, exits non-zero, killed by a signal, times out, cannot start; before the
#: freeze also "stop": a SIGTERM arrives while the run waits for it.
OUTCOMES = ["ok", "fail", "signal", "timeout", "spawn-failed"]
CHECKS = st.sampled_from(["ok", "ok", "ok", "ok", "not-found", "permission"])


def attempts(stop: bool) -> st.SearchStrategy[list[str]]:
    """Outcomes for every possible attempt of one script."""
    one = st.sampled_from([*OUTCOMES, "ok", "ok"] + (["stop"] if stop else []))
    return st.lists(one, min_size=MAX_RETRIES + 1, max_size=MAX_RETRIES + 1)


@dataclass
class Script:
    """A script's (or hook's) drawn behaviour."""

    check: str
    pre: list[str]
    post: list[str]


@dataclass
class Case:
    """One drawn run."""

    pre: Script
    post: Script
    hooks: list[Script]
    pre_retries: int
    post_retries: int
    continue_on_failure: bool
    freeze_enabled: bool
    mode: str  # none | command | hold | callable
    freeze: str  # ok | ebusy | blocked | prepare-error | deadline | external | thaw-error | thaw-first
    step: str
    late_stop: bool
    #: The snapshot command's own check (mode command): "ok" or "refused" (root must not run it).
    command_check: str = "ok"


STEPS = {
    "none": ["ok"],
    "command": ["ok", "fail", "timeout", "spawn-failed", "released"],
    # deadline-unfired: the hold's wait ran out and quiesce thawed before the guardian acted.
    "hold": ["stdin", "signal SIGTERM", "deadline", "deadline-unfired", "announce-fails"],
    "callable": ["ok", "raises", "thaw-request"],
}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A run: its scripts and hooks, config, freeze, snapshot step and signals."""
    script = st.builds(Script, CHECKS, attempts(stop=True), attempts(stop=False))
    mode = draw(st.sampled_from(list(STEPS)))
    freeze = draw(
        st.sampled_from(
            [
                "ok",
                "ok",
                "ebusy",
                "blocked",
                "prepare-error",
                "deadline",
                "external",
                "thaw-error",
                "thaw-first",
            ]
        )
    )
    step = draw(st.sampled_from(STEPS[mode]))
    if mode == "hold" and freeze == "deadline":
        step = "deadline"  # the hold's deadline is the guardian's
    return Case(
        pre=draw(script),
        post=Script(draw(CHECKS), ["ok"], draw(attempts(stop=False))),
        hooks=draw(st.lists(script, max_size=3)),
        pre_retries=draw(st.integers(0, MAX_RETRIES)),
        post_retries=draw(st.integers(0, MAX_RETRIES)),
        continue_on_failure=draw(st.booleans()),
        freeze_enabled=draw(st.booleans()),
        mode=mode,
        freeze=freeze,
        step=step,
        late_stop=mode in ("command", "callable") and draw(st.booleans()),
        command_check=draw(st.sampled_from(["ok", "ok", "ok", "refused"])) if mode == "command" else "ok",
    )


# -- the model: README's rules, stated on their own ---------------------------------------------


@dataclass
class Expected:
    """What README says the run does with a case."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)  # (script, step, attempts)
    errors: list[tuple[str, int | None]] = field(default_factory=list)
    snapshot: str = "skipped"
    snapshot_ran: bool = False
    snapshot_frozen_step: bool = False
    froze: bool = False
    interrupted: bool = False
    late_stop: bool = False
    pre_status: str = "interrupted"
    scripts_ok: bool = True
    consistency: str = FAILED
    exit_code: int = 9


def attempts_of(outcomes: list[str], retries: int) -> tuple[int, str]:
    """Attempts made and the status: re-run until the first success (or stop) or the limit."""
    for n, outcome in enumerate(outcomes[: retries + 1], start=1):
        if outcome in ("ok", "stop"):
            return n, "ok" if outcome == "ok" else "interrupted"
    return retries + 1, "timeout" if outcomes[retries] == "timeout" else "failed"


def model(case: Case) -> Expected:
    """The expected run (README: the run, the snapshot step, the result table, the exit codes)."""
    e = Expected()

    def script(name: str, s: Script, step: str, phase: str, retries: int) -> str:
        if s.check != "ok":
            status = s.check
            e.calls.append((name, step, 0))
        else:
            n, status = attempts_of(s.pre if step != "post" else s.post, retries)
            e.calls.append((name, step, n))
        if status == "interrupted":
            e.interrupted = True
        elif status != "ok":
            e.errors.append(NAMES[(phase, status)])
            e.scripts_ok = False
        return status

    # The checks: if either script fails its own, neither script runs (the first failure is the
    # error, a failed pre step); the hooks still pair their own pre and post steps.
    failed_check = next(
        ((p, s) for p, s in (("pre", case.pre), ("post", case.post)) if s.check != "ok"), None
    )
    if failed_check is not None:
        e.errors.append(NAMES[(failed_check[0], failed_check[1].check)])
        e.scripts_ok = False
        e.calls += [(PRE, "pre", 0), (POST, "post", 0)]
        e.pre_status = case.pre.check if case.pre.check != "ok" else "skipped"
    # A snapshot command root must not run (checked with the scripts): no snapshot can be taken,
    # so nothing runs at all, no script, no hook, no freeze: failed, SnapshotFailed.
    if refused(case):
        e.errors.append(SNAPSHOT_FAILED)
        if failed_check is None:
            e.calls += [(PRE, "pre", 0), (POST, "post", 0)]
            e.pre_status = "skipped"
        e.scripts_ok = False
        return e
    if failed_check is None:
        # Pre steps: the pre-script, then the hooks in name order up to the first failure.
        e.pre_status = script(PRE, case.pre, "pre", "pre", case.pre_retries)
    go = e.pre_status == "ok" or (case.continue_on_failure and not e.interrupted)
    started = []
    if go and not e.interrupted:
        for i, h in enumerate(case.hooks):
            status = script(f"{HOOK_DIR}/{i:02}-hook", h, "pre", "pre", case.pre_retries)
            if status != "ok":
                break
            started.append(i)
        go = e.scripts_ok or case.continue_on_failure
    if e.interrupted:
        e.pre_status = "interrupted"
    # The snapshot step: frozen, unfrozen, or not at all.
    if go and not e.interrupted:
        window(case, e)
    # Post steps: always; hooks whose pre step succeeded in reverse, then the post-script.
    for i in reversed(started):
        script(f"{HOOK_DIR}/{i:02}-hook", case.hooks[i], "post", "post", case.post_retries)
    if failed_check is None:
        script(POST, case.post, "post", "post", case.post_retries)
    # The result table.
    held = case.freeze_enabled and e.froze
    if e.interrupted or e.snapshot != "ok":
        e.consistency = FAILED
    elif e.scripts_ok and (held or not case.freeze_enabled):
        e.consistency = APPLICATION
    elif not case.continue_on_failure:
        e.consistency = FAILED
    else:
        e.consistency = FILESYSTEM if held else CRASH
    if e.interrupted or e.late_stop:
        e.exit_code = 128 + signal.SIGTERM
    else:
        e.exit_code = {APPLICATION: 0, FILESYSTEM: 8, CRASH: 8, FAILED: 9}[e.consistency]
    return e


def refused(case: Case) -> bool:
    """The run's snapshot command fails its check."""
    return case.mode == "command" and case.command_check != "ok"


def window(case: Case, e: Expected) -> None:
    """Freeze (if enabled), the snapshot step, thaw."""
    frozen = case.freeze_enabled
    e.snapshot = "failed"
    if frozen and case.freeze in ("ebusy", "blocked", "prepare-error"):
        e.errors.append(FREEZE_TIMEOUT if case.freeze == "blocked" else FREEZE_FAILED)
        if not case.continue_on_failure:
            return
        frozen = False
    if frozen and case.freeze == "thaw-first":
        e.errors.append(SNAPSHOT_FAILED)  # released before the freeze: nothing frozen, nothing taken
        return
    e.snapshot_ran, e.snapshot_frozen_step = True, frozen
    step = case.step
    ok = {
        "ok": True,
        "stdin": True,
        "signal SIGTERM": True,
        "released": not frozen,
        "thaw-request": not frozen,
    }.get(step, False)
    # A hold that ran out frozen is named by the freeze's own error first (the guardian's, when it acted).
    named_after_freeze = step == "deadline-unfired" and frozen
    if not ok and not (step == "deadline" and frozen) and not named_after_freeze:
        e.errors.append(SNAPSHOT_FAILED)
    e.snapshot = "ok" if ok else "failed"
    if frozen:
        cut = "deadline" if step == "deadline" else case.freeze
        e.froze = cut == "ok"
        if cut == "deadline":
            e.errors.append(FREEZE_TIMEOUT)
        elif cut in ("external", "thaw-error"):
            e.errors.append(FREEZE_FAILED)
    if named_after_freeze:
        e.errors.append(SNAPSHOT_FAILED)
    if case.late_stop:
        e.late_stop = True
        e.errors.append(INTERRUPTED)


# -- the fakes ----------------------------------------------------------------------------------


def checked(path: str, phase: str) -> CheckedScript:
    """A CheckedScript with no fd: the fake attempts never exec it."""
    return CheckedScript(path, path, -1, phase, True, "/bin/sh", 0, 0o700, 0, 0, 0)


def attempt_of(number: int, outcome: str) -> Attempt:
    """An Attempt as the real supervisor would report ``outcome``."""
    exit_code = {"ok": 0, "fail": 3}.get(outcome)
    return Attempt(
        number=number,
        outcome={"signal": "failed", "fail": "failed"}.get(outcome, outcome),
        exit_code=exit_code,
        signal="SIGKILL" if outcome in ("signal", "timeout") else None,
        duration_ns=0,
        timed_out=outcome == "timeout",
        killed=outcome == "timeout",
        cpu_user_us=0,
        cpu_system_us=0,
        max_rss_kb=0,
        stdout="",
        stderr="",
        stdout_bytes=0,
        stderr_bytes=0,
        stdout_truncated=False,
        stderr_truncated=False,
        leftovers_killed=0,
        isolation="fake",
        error="cannot start" if outcome == "spawn-failed" else None,
    )


class World:
    """The fake runner and freezer for one case; records what the run did."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.scripts = {PRE: case.pre, POST: case.post}
        self.scripts |= {f"{HOOK_DIR}/{i:02}-hook": h for i, h in enumerate(case.hooks)}
        self.calls: dict[tuple[str, str], int] = {}
        self.post_env: dict[str, str] | None = None
        self.snapshot_calls: list[bool] = []  # frozen?
        self.freezes: list[FakeFreeze] = []

    # ScriptRunner's seams

    def check(self, path: str, phase: str) -> CheckedScript:
        s = self.scripts[path]
        if s.check == "not-found":
            raise ScriptNotFound(f"{path}: no such file", phase)
        if s.check == "permission":
            raise ScriptPermissionError(f"{path}: group-writable", phase)
        return checked(path, phase)

    def attempt(
        self,
        script,
        params,
        policy,
        *,
        number,
        env,
        cgroup_name,
        progress=None,
        interruptible=None,
        label=None,
    ):
        step = "post" if (params and params[0] == "post") or script.phase == "post" else "pre"
        self.calls[(script.path, step)] = number
        if script.path == POST:
            self.post_env = dict(env)
        s = self.scripts[script.path]
        outcome = (s.post if step == "post" else s.pre)[number - 1]
        if outcome == "stop":
            with interruptible():
                signal.raise_signal(signal.SIGTERM)  # the run's handler raises RunInterrupted here
            raise AssertionError("a SIGTERM while waiting for a script did not stop the run")
        return attempt_of(number, outcome)

    # Freezer

    def plan(self, ext, vmbackup_conf):
        return TARGETS

    def open(self, targets, options):
        f = FakeFreeze(self.case, targets)
        self.freezes.append(f)
        return f

    def command(
        self, freeze, argv, *, timeout_s, grace_s, env, run_id, cgroup_parent, release_fd, release_sig
    ):
        if freeze is not None:
            freeze.freeze()  # the native window freezes first
        assert env["QUIESCE_FROZEN"] == ("1" if freeze is not None else "0")
        self.snapshot_calls.append(freeze is not None)
        step = self.case.step
        if step == "released" and freeze is None:
            step = "ok"  # nothing frozen: nothing for `quiesce thaw` to end
        self._late_stop()
        return attempt_of(1, step if step != "released" else "released")

    def release(self):
        return FakeRelease(self)

    def check_command(self, argv):
        assert tuple(argv) == ("/bin/snap",)
        return "snapshot command /bin/snap is not safe to run as root" if refused(self.case) else None

    def snapshot(self) -> None:
        frozen = bool(self.freezes) and self.freezes[-1].frozen
        self.snapshot_calls.append(frozen)
        self._late_stop()
        if self.case.step == "raises":
            raise RuntimeError("the snapshot API said no")
        if self.case.step == "thaw-request":
            signal.raise_signal(signal.SIGUSR1)

    def on_hold(self, news) -> None:
        frozen = bool(self.freezes) and self.freezes[-1].frozen
        assert bool(news.frozen) == frozen and bool(news.not_frozen) == (not frozen)
        self.snapshot_calls.append(frozen)
        if self.case.step == "announce-fails":
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    def _late_stop(self) -> None:
        if self.case.late_stop:
            signal.raise_signal(signal.SIGTERM)  # in the window: recorded, acted on after


class FakeFreeze:
    """A freeze whose outcome the case chooses; its report is what the real one would say."""

    def __init__(self, case: Case, targets) -> None:
        self.case, self.targets = case, tuple(targets)
        self.report = FreezeReport(run_id="fake")
        self.frozen = False
        self.cut = case.freeze if case.freeze in ("deadline", "external", "thaw-error") else None

    def prepare(self) -> None:
        if self.case.freeze == "prepare-error":
            raise LedgerError("cannot write the ledger: EROFS")
        if self.case.freeze == "thaw-first":
            signal.raise_signal(signal.SIGUSR1)  # `quiesce thaw` during the pre-flush

    def freeze(self) -> None:
        if self.case.freeze == "ebusy":
            raise FrozenByOtherError(errno.EBUSY, "FIFREEZE", "/logs")
        if self.case.freeze == "blocked":
            raise FreezeTimeoutError(errno.ETIMEDOUT, "FIFREEZE", "/logs")
        self.frozen = True

    def remaining_ns(self) -> int:
        return 1_000_000_000

    def record_error(self, err: BaseException) -> None:
        self.report.error = str(err)

    def close(self) -> None:
        state = "thawed" if self.frozen else "not-attempted"
        if self.frozen and self.cut == "deadline":
            state = "thawed-by-guardian"
            self.report.guardian_reason = "deadline"
        states = [state] * len(self.targets)
        if self.frozen and self.cut == "external":
            states[0] = "thawed-externally"
        self.report.targets = [
            FilesystemResult(t.mount.mount_point, t.mount.dev, t.mount.fstype, 0, s, 0, 0, 0, 0, 0, 0, 0, 0)
            for t, s in zip(self.targets, states, strict=True)
        ]
        if self.frozen and self.cut == "thaw-error":
            raise ThawError(errno.EIO, "FITHAW", "/data")


class FakeRelease:
    """The hold's release, as the case chooses; a deadline means the guardian thawed first."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.received = None

    def wait(self, remaining_ns, use_stdin) -> str:
        if self.world.case.step == "deadline" and self.world.freezes and self.world.freezes[-1].frozen:
            self.world.freezes[-1].cut = "deadline"
        # Run out before the guardian acted: quiesce's own thaw ends the window.
        return "deadline" if self.world.case.step == "deadline-unfired" else self.world.case.step

    def close(self) -> None:
        pass


# -- the properties -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir() -> Iterator[str]:
    """A run directory for the lock: root's, under /run (quiesce refuses one others can write)."""
    if os.geteuid() != 0:
        pytest.skip("a run directory must be root's: needs root")
    with tempfile.TemporaryDirectory(prefix="quiesce-rules-", dir="/run") as d:
        yield d


def config(case: Case) -> LoadedConfig:
    """The plugin config of a case."""
    spec = (
        SnapshotSpec(SnapshotMode(case.mode), ("/bin/snap",), 5)
        if case.mode != "callable"
        else SnapshotSpec()
    )
    cfg = PluginConfig(
        pre_script=PRE,
        post_script=POST,
        pre_retries=case.pre_retries,
        post_retries=case.post_retries,
        continue_on_failure=case.continue_on_failure,
        fs_freeze_enabled=case.freeze_enabled,
        quiesce=Extensions(snapshot=spec, hook_directory=HOOK_DIR),
    )
    return LoadedConfig(cfg, (), "<rules>")


def drive(case: Case, run_dir: str, world: World | None = None):
    """Run the real scheduler on the fakes (``world``: a World of ``case`` that acts differently)."""
    world = world or World(case)
    hooks = HookDirectory(
        HOOK_DIR, [Hook(f"{i:02}-hook", f"{HOOK_DIR}/{i:02}-hook", False) for i in range(len(case.hooks))]
    )
    options = RunOptions(
        pluginhost_path=None,
        vmbackup_conf=None,
        run_dir=run_dir,
        on_hold=world.on_hold,
        hold_stdin=False,
        handle_signals=True,
    )
    runner = ScriptRunner(check=world.check, attempt=world.attempt, sleep=lambda s: None)
    with mock.patch.object(run_job, "discover", return_value=hooks):
        result = run(
            options,
            config=config(case),
            snapshot=world.snapshot if case.mode == "callable" else None,
            runner=runner,
            freezer=world,
        )
    return world, result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases())
def test_the_run_follows_the_documented_rules(run_dir, case):
    """Attempts, steps, result class, exit code, error name and the post-script's env follow README."""
    world, result = drive(case, run_dir)
    e = model(case)
    # Retries re-run each script exactly until its first success or the limit; checks that fail run nothing.
    made = {(path, step): n for (path, step), n in world.calls.items()}
    assert {(p, s): n for p, s, n in e.calls if n} == made
    # Which steps ran: the snapshot step exactly when due, frozen exactly when the freeze held
    # (mode none has nothing to run).
    due = e.snapshot_ran and case.mode != "none"
    assert world.snapshot_calls == ([e.snapshot_frozen_step] if due else [])
    # The post-script always runs once both checks passed, and is told the truth; else it never runs.
    if case.pre.check != "ok" or case.post.check != "ok" or refused(case):
        assert world.post_env is None and result.pre is not None and result.post is not None
        assert (result.pre.status, result.post.status) == (
            case.pre.check if case.pre.check != "ok" else "skipped",
            case.post.check if case.post.check != "ok" else "skipped",
        )
    else:
        assert world.post_env is not None
        assert world.post_env["QUIESCE_SNAPSHOT"] == e.snapshot == result.snapshot
        assert world.post_env["QUIESCE_PRE_STATUS"] == e.pre_status
    assert result.consistency == e.consistency
    assert run_exit(result) == e.exit_code
    # A run that gave no trusted snapshot always says why.
    if result.consistency == FAILED:
        assert result.error_name is not None, result
    first = e.errors[0] if e.errors else (None, None)
    if e.interrupted:
        first = INTERRUPTED
    assert (result.error_name, result.error_code) == first
    assert result.snapshot_frozen == (e.snapshot == "ok" and e.froze)
    # The timeline's window never reads "ok" for a freeze that did not hold.
    windows = [p.status for p in result.phases if p.name == "freeze-window"]
    if case.freeze_enabled and result.freeze is not None and not result.freeze.ok:
        assert "ok" not in windows, (windows, result.freeze)
    assert (result.interrupted_by == "SIGTERM") == (e.interrupted or e.late_stop)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases())
def test_no_result_is_better_than_what_happened(run_dir, case):
    """Whatever failed caps the result: a failed script or hook, a freeze that did not hold, no snapshot."""
    world, result = drive(case, run_dir)
    rank = RANK[result.consistency]
    scripts = [result.pre, result.post, *result.hooks_pre, *result.hooks_post]
    if result.snapshot != "ok":
        assert result.consistency == FAILED
    if any(s is None or not s.ok for s in scripts):
        assert rank < RANK[APPLICATION]
    if result.interrupted_by and result.snapshot != "ok":
        assert result.consistency == FAILED
    if case.freeze_enabled and (result.freeze is None or not result.freeze.ok):
        assert rank <= RANK[CRASH]
    if not case.continue_on_failure and result.error_name not in (None, "RunInterrupted"):
        assert result.consistency == FAILED
    if result.consistency != FAILED:
        assert result.post is not None and (world.snapshot_calls or case.mode == "none")


def test_the_rules_hold_on_the_fakes_alone(run_dir):
    """The seams need no processes, freezes or signals: one plain case runs (a smoke test of the harness)."""
    case = Case(
        Script("ok", ["fail", "ok", "ok", "ok"], ["ok"] * 4),
        Script("ok", ["ok"], ["ok"] * 4),
        [],
        pre_retries=1,
        post_retries=0,
        continue_on_failure=True,
        freeze_enabled=True,
        mode="command",
        freeze="ok",
        step="ok",
        late_stop=False,
    )
    world, result = drive(case, run_dir)
    assert world.calls == {(PRE, "pre"): 2, (POST, "post"): 1}
    assert result.consistency == APPLICATION and run_exit(result) == 0
    assert os.path.isdir(run_dir)


def clean_hold(freeze_enabled: bool, step: str) -> Case:
    """A run whose scripts succeed at once and whose snapshot step is a hold released by ``step``."""
    return Case(
        Script("ok", ["ok"] * 4, ["ok"] * 4),
        Script("ok", ["ok"], ["ok"] * 4),
        [],
        pre_retries=0,
        post_retries=0,
        continue_on_failure=True,
        freeze_enabled=freeze_enabled,
        mode="hold",
        freeze="ok",
        step=step,
        late_stop=False,
    )


@pytest.mark.parametrize("freeze_enabled", [True, False])
def test_a_hold_that_ran_out_before_the_guardian_acted_says_why(run_dir, freeze_enabled):
    """The hold ran out and quiesce thawed before the guardian acted: failed, SnapshotFailed, exit 9."""
    case = clean_hold(freeze_enabled, step="deadline-unfired")
    world, result = drive(case, run_dir)
    assert world.post_env is not None and world.post_env["QUIESCE_SNAPSHOT"] == "failed"
    assert result.consistency == FAILED and run_exit(result) == 9
    assert (result.error_name, result.error_code) == SNAPSHOT_FAILED
    assert result.released_by == "deadline" and "without a release" in (result.message or "")
    assert not result.snapshot_frozen


@pytest.mark.parametrize("freeze_enabled", [True, False])
def test_a_stop_just_before_the_hold_takes_over_stops_the_run(run_dir, freeze_enabled):
    """SIGTERM after the last check but before the hold's handlers: the run stops, nothing frozen, exit 143.

    The hold installs its own handlers for its release; a stop recorded
    just before would otherwise be missed for the whole hold.
    """
    case = clean_hold(freeze_enabled, step="stdin")

    class StopFirst(World):
        def release(self):
            signal.raise_signal(signal.SIGTERM)  # the run's own handler records it
            return super().release()

    world, result = drive(case, run_dir, StopFirst(case))
    assert world.snapshot_calls == [], "the hold was announced after a stop"
    assert not any(f.frozen for f in world.freezes)
    assert result.interrupted_by == "SIGTERM" and run_exit(result) == 128 + signal.SIGTERM
    assert result.snapshot == "skipped" and result.consistency == FAILED
    assert world.post_env is not None and world.post_env["QUIESCE_SNAPSHOT"] == "skipped"
