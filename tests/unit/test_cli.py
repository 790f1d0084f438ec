"""The command line without freezing: help, status, thaw with nothing to do, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from quiesce.cli import main
from quiesce.cli import status as cli_status
from quiesce.cli.exits import Exit, exit_code_for
from quiesce.cli.render import human_ns
from quiesce.cli.run import ProgressLine
from quiesce.errors import (
    FreezeTimeoutError,
    FrozenByOtherError,
    LockHeldError,
    NotFrozenError,
    TargetError,
    ThawError,
)


def run(*args, run_dir=None):
    """Run ``python -m quiesce``."""
    argv = [sys.executable, "-m", "quiesce", *args]
    if run_dir is not None:
        argv[3:3] = []
        argv += ["--run-dir", str(run_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_help_lists_commands_and_exit_codes():
    """``--help`` names every command and documents the exit codes."""
    r = run("--help")
    assert r.returncode == 0
    for word in ("mounts", "freeze", "thaw", "status", "exit status", "guardian"):
        assert word in r.stdout


@pytest.mark.parametrize("command", ["mounts", "freeze", "thaw", "status"])
def test_each_command_has_help(command):
    """Each subcommand's help explains it and offers --json."""
    r = run(command, "--help")
    assert r.returncode == 0 and "--json" in r.stdout


def test_freeze_help_explains_release_and_timeout():
    """``freeze --help`` says how a freeze ends."""
    text = run("freeze", "--help").stdout
    for word in ("--hold", "--timeout", "quiesce thaw", "SIGTERM", "stdin"):
        assert word in text


#: A run directory that does not exist, on a path only root can change (/, /run).
MISSING_RUN_DIR = f"/run/quiesce-unit-test-missing-{uuid.uuid4().hex}"


def test_status_with_nothing_in_progress():
    """``status --json`` without a run dir: no ledger, lock free, no holder named."""
    r = run("status", "--json", run_dir=MISSING_RUN_DIR)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ledger"] is None and data["lock_held"] is False and data["lock_holder"] is None
    assert not os.path.exists(MISSING_RUN_DIR)


def test_thaw_with_nothing_to_thaw():
    """``thaw`` without a ledger says so and succeeds (and makes no run directory)."""
    r = run("thaw", run_dir=MISSING_RUN_DIR)
    assert r.returncode == 0 and "nothing to thaw" in r.stdout
    assert not os.path.exists(MISSING_RUN_DIR)


@pytest.mark.parametrize("command", ["status", "thaw", "recover"])
def test_a_run_dir_others_can_write_is_refused(tmp_path, command):
    """A run directory below /tmp (anyone can write there) is named and refused: exit 1, JSON says why."""
    r = run(command, "--json", run_dir=tmp_path)
    assert r.returncode == Exit.ERROR, r.stdout
    err = json.loads(r.stdout)
    assert err["error_type"] == "UnsafeRunDirError"
    assert str(tmp_path) in err["error"] and "/tmp" in err["error"] and "writable by" in err["error"]


def test_mounts_json_is_a_plan():
    """``mounts --json`` prints targets, skipped (each with a reason) and unmatched."""
    r = run("mounts", "--json", "--no-vmbackup-conf")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert set(plan) == {"targets", "skipped", "unmatched", "named", "problems"}
    assert all(s["reason"] for s in plan["skipped"])
    assert any(s["mount_point"] == "/proc" and s["reason"] == "pseudo" for s in plan["skipped"])


def test_freeze_of_a_missing_path_is_a_target_error(tmp_path):
    """Naming a path that does not exist exits 7 before anything is frozen, saying it is missing."""
    r = run("freeze", str(tmp_path / "nope"), run_dir=tmp_path)
    assert r.returncode == Exit.BAD_TARGET
    assert f"{tmp_path / 'nope'}: no such file or directory" in r.stderr


def test_usage_error_exit_code():
    """An unknown option is a usage error (2)."""
    assert run("freeze", "--bogus", "/x").returncode == 2


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (LockHeldError("held"), Exit.LOCKED),
        (TargetError("bad"), Exit.BAD_TARGET),
        (FrozenByOtherError(16, "FIFREEZE", "/x"), Exit.FREEZE_FAILED),
        (FreezeTimeoutError(110, "FIFREEZE (blocked)", "/x"), Exit.GUARDIAN_THAWED),
        (NotFrozenError(22, "FITHAW", "/x"), Exit.THAW_FAILED),
        (RuntimeError("?"), Exit.ERROR),
    ],
)
def test_exit_code_for(err, code):
    """Each error class maps to its documented exit status."""
    assert exit_code_for(err) == code


@pytest.mark.parametrize(
    ("ns", "text"),
    [(None, "-"), (812_000, "812 us"), (3_400_000, "3.40 ms"), (1_250_000_000, "1.25 s")],
)
def test_human_durations(ns, text):
    """Durations on a terminal read in the right unit."""
    assert human_ns(ns) == text


# ---------------------------------------------------------------------------
# numbers out of range, usage errors and --json, versions, per-command exit codes


@pytest.mark.parametrize(
    "argv",
    [
        ["freeze", "--timeout", "inf", "/x"],
        ["freeze", "--timeout", "1e12", "/x"],
        ["freeze", "--timeout", "nan", "/x"],
        ["freeze", "--timeout", "-5", "/x"],
        ["freeze", "--timeout", "0", "/x"],
        ["freeze", "--step-timeout", "inf", "/x"],
        ["freeze", "--step-timeout", "-1", "/x"],
        ["thaw", "--wait", "1e300"],
        ["recover", "--wait", "-1"],
        ["demo", "--timeout", "inf"],
        ["bench", "--timeout", "1e12", "/x"],
        ["bench", "-n", "1e3", "/x"],
        ["bench", "-n", "99999999999999999999", "/x"],
        ["bench", "--dirty", "1e9", "/x"],
        ["bench", "--interval", "inf", "/x"],
        ["fleet", "run", "--etcd", "http://127.0.0.1:9", "--group", "g", "--deadline", "nan"],
        ["fleet", "run", "--etcd", "http://127.0.0.1:9", "--group", "g", "--expect", "0"],
        ["fleet", "status", "--etcd", "http://127.0.0.1:9", "--group", "g", "--last", "-1"],
        ["agent", "--etcd", "http://127.0.0.1:9", "--group", "g", "--ttl", "0"],
        ["qga", "--hook-timeout", "inf"],
    ],
)
def test_every_numeric_option_is_range_checked(argv, tmp_path):
    """inf, nan, 1e12, negatives: a usage error (2) naming the allowed range, never a traceback."""
    r = run(*argv, run_dir=tmp_path)
    assert r.returncode == Exit.USAGE, r.stderr
    assert "Traceback" not in r.stderr
    assert "expected a " in r.stderr and ("at most" in r.stderr or " to " in r.stderr)


@pytest.mark.parametrize(
    ("members", "said"),
    [
        ("", "names no node"),
        (",", "names no node"),
        ("a,,b", "empty name"),
        ("a,", "empty name"),
        ("a,a", "names a more than once"),
        ("a b", "invalid node name"),
        ("a/../b", "invalid node name"),
        (",".join(f"n{i}" for i in range(127)), "at most 126"),
    ],
)
def test_members_is_checked_before_etcd_is_asked(members, said, tmp_path):
    """A --members list naming no node is a usage error, never "every registered agent"; etcd is not asked.

    The endpoint is a closed port: had the command gone on to etcd, it would say so (exit 1).
    """
    argv = ["fleet", "run", "--etcd", "http://127.0.0.1:9", "--group", "g", "--members", members]
    r = run(*argv, run_dir=tmp_path)
    assert r.returncode == Exit.USAGE, r.stderr
    assert "argument --members" in r.stderr and said in r.stderr, r.stderr
    assert "etcd does not answer" not in r.stderr


def test_members_names_are_stripped():
    """Spaces after the commas are not part of a node's name."""
    from quiesce.fleet.cli import _members

    assert _members("a, b ,c") == ("a", "b", "c")


def _numeric_options(parser, path=()):
    """Every option of every command whose type turns "5" into a number: (command path, option, type)."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _numeric_options(sub, (*path, name))
        elif action.type is not None:
            try:
                five = action.type("5")
            except (argparse.ArgumentTypeError, ValueError, TypeError):
                continue
            if isinstance(five, int | float):
                option = action.option_strings[0] if action.option_strings else action.dest
                yield " ".join(path), option, action.type


def test_every_numeric_option_of_every_command_is_bounded():
    """Walk the whole parser: no number option takes inf, nan, a negative or 1e12 (the class, not a list)."""
    import argparse

    from quiesce.cli import build_parser

    found = list(_numeric_options(build_parser()))
    commands = {command.split(" ")[0] for command, _, _ in found}
    assert {"freeze", "bench", "agent", "fleet", "qga"} <= commands, commands  # the walk reaches them
    unbounded = []
    for command, option, parse in found:
        for text in ("inf", "nan", "-1", "1e12", "0x10"):
            try:
                parse(text)
            except (argparse.ArgumentTypeError, ValueError):
                continue
            unbounded.append(f"{command} {option} {text}")
    assert not unbounded


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--json", "--bogus-option"],
        ["freeze", "--json", "--timeout", "inf", "/x"],
        ["--json"],
        ["thaw", "--json", "--wait"],
        ["status", "--json", "extra"],
    ],
)
def test_json_usage_errors_print_one_json_object(argv):
    """With --json, a usage error is still exactly one JSON object on stdout, exit 2."""
    r = run(*argv)
    assert r.returncode == Exit.USAGE
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    doc = json.loads(lines[0])
    assert doc["exit"] == 2 and doc["error_type"] == "UsageError" and doc["error"]


def test_json_unexpected_error_prints_one_json_object(monkeypatch, capsys, tmp_path):
    """An error nobody foresaw: one JSON object with the exception, exit 1, the traceback on stderr."""

    def boom(args):
        raise RuntimeError("something nobody foresaw")

    # The parser imports a command's module when the command runs, and looks it up there.
    monkeypatch.setattr(cli_status, "cmd_status", boom)
    code = main(["status", "--json", "--run-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == Exit.ERROR
    doc = json.loads(out)
    assert doc["error_type"] == "RuntimeError" and "something nobody foresaw" in doc["error"]
    assert "Traceback" in err


def test_config_missing_under_tmp_is_missing_not_unsafe(tmp_path):
    """`run --config /tmp/.../nope.json`: exit 10, code 316, "does not exist"."""
    r = run("run", "--json", "--config", str(tmp_path / "nope.json"), "--no-pluginhost", run_dir=tmp_path)
    assert r.returncode == Exit.CONFIG
    doc = json.loads(r.stdout)
    assert doc["error_code"] == 316 and "does not exist" in doc["error"]


def test_version_is_one_source():
    """`quiesce --version`, quiesce.__version__ and pyproject.toml's version agree."""
    import pathlib
    import tomllib

    import quiesce

    root = pathlib.Path(__file__).resolve().parents[2]
    with open(root / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    assert quiesce.__version__ == declared
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"quiesce {declared}"


@pytest.mark.parametrize(
    ("command", "has", "lacks"),
    [
        ("status", ["0  success"], ["FIFREEZE failed", "backup failed", "128+N"]),
        ("mounts", ["7  a named target"], ["FITHAW failed", "backup failed", "128+N"]),
        ("run", ["8  a snapshot was taken", "10  a configuration", "128+N"], ["7  a named target"]),
        ("freeze", ["4  a FIFREEZE failed", "7  a named target"], ["backup failed", "128+N"]),
        ("thaw", ["6  a FITHAW failed"], ["backup failed", "7  a named target"]),
        ("bench", ["130  interrupted", "5  the guardian thawed"], ["backup failed", "128+N"]),
        ("check", ["10  a configuration"], ["FIFREEZE failed", "128+N"]),
    ],
)
def test_each_commands_help_lists_only_its_exit_codes(command, has, lacks):
    """A subcommand's --help lists the exit codes it can return, and no others."""
    text = run(command, "--help").stdout
    for phrase in has:
        assert phrase in text, phrase
    for phrase in lacks:
        assert phrase not in text, phrase


def test_status_names_a_lock_holder_only_while_the_lock_is_held(root_run_dir):
    """A free lock whose file still holds an old pid: lock_held false and lock_holder null."""
    with open(os.path.join(root_run_dir, "lock"), "w") as f:
        f.write("12345\n")
    data = json.loads(run("status", "--json", run_dir=root_run_dir).stdout)
    assert data["lock_held"] is False and data["lock_holder"] is None


def test_progress_lines_are_paced_and_name_their_step():
    """Off a terminal: one line per pace per step, each naming the step; a new step starts afresh."""
    import io

    out = io.StringIO()
    line = ProgressLine(out, 3.0)
    line.set_pace(1.0)
    for tenth in range(1, 26):  # 2.5 s of ticks every 100 ms
        line("pre-script", 1, tenth * 100_000_000, 30_000_000_000)
    for tenth in range(1, 13):
        line("hook 10-db pre", 1, tenth * 100_000_000, 30_000_000_000)
    line("session hook 20-db.session: waiting for READY", 1, 1_000_000_000, 30_000_000_000)
    assert out.getvalue().splitlines() == [
        "pre-script: attempt 1, 1.00 s of 30.00 s",
        "pre-script: attempt 1, 2.00 s of 30.00 s",
        "hook 10-db pre: attempt 1, 1.00 s of 30.00 s",
        "session hook 20-db.session: waiting for READY: attempt 1, 1.00 s of 30.00 s",
    ]


def test_every_option_of_every_command_says_what_it_does():
    """``--help`` answers for every option: none is listed without a help text (hidden ones aside)."""
    import argparse

    from quiesce.cli import build_parser

    def options(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from options(sub, f"{path} {name}")
            elif action.help != argparse.SUPPRESS:
                yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help

    seen = dict(options(build_parser(), "quiesce"))
    assert "quiesce agent --config" in seen and "quiesce fleet run --members" in seen
    assert [name for name, text in seen.items() if not (text or "").strip()] == []


@pytest.mark.parametrize(
    ("argv", "hook"),
    [
        (["-F"], "/etc/qemu/fsfreeze-hook"),
        (["-F/srv/hook"], "/srv/hook"),
        (["--fsfreeze-hook=/srv/hook"], "/srv/hook"),
        (["--fsfreeze-hook", "/srv/hook"], "/srv/hook"),
        ([], None),
    ],
)
def test_qga_takes_qemu_ga_hook_option(argv, hook):
    """``quiesce qga`` takes qemu-ga's ``-F[PATH]``: alone it names qemu-ga's default hook."""
    from quiesce.cli import build_parser

    args = build_parser().parse_args(["qga", *argv])
    assert args.fsfreeze_hook == hook


@pytest.mark.parametrize(
    ("guardian", "err", "released_by", "code"),
    [
        (None, None, "stdin", Exit.OK),
        ("deadline", None, "deadline", Exit.GUARDIAN_THAWED),
        (None, None, "deadline", Exit.GUARDIAN_THAWED),
        ("blocked-freeze", FreezeTimeoutError(110, "FIFREEZE (blocked)", "/x"), None, Exit.GUARDIAN_THAWED),
        ("deadline", FreezeTimeoutError(110, "FIFREEZE (deadline)", "/x"), None, Exit.GUARDIAN_THAWED),
        (None, FrozenByOtherError(16, "FIFREEZE", "/x"), None, Exit.FREEZE_FAILED),
        (None, ThawError(5, "FITHAW", "/x"), "stdin", Exit.THAW_FAILED),
    ],
)
def test_freeze_exit_follows_how_the_window_ended(guardian, err, released_by, code):
    """``quiesce freeze``: a FIFREEZE that blocked until the guardian thawed exits 5, as README says."""
    from quiesce.cli.holder import report_exit
    from quiesce.engine.report import FreezeReport

    report = FreezeReport(run_id="r", guardian_reason=guardian)
    assert report_exit(report, err, released_by) == code


def test_human_run_output_never_shows_a_window_that_did_not_hold_as_the_window():
    """``print_run``: a freeze the guardian cut short (or rolled back) is said not to have held."""
    import io

    from quiesce.cli.render import print_run
    from quiesce.engine.report import FilesystemResult, FreezeReport
    from quiesce.runner.types import RunResult

    def result(state: str, guardian: str | None) -> str:
        fs = FilesystemResult("/data", "8:1", "xfs", 30, state, None, 0, 0, 10, 0, 500, 20, 0)
        report = FreezeReport(run_id="f", targets=[fs], window_ns=520, guardian_reason=guardian)
        out = io.StringIO()
        print_run(RunResult(run_id="r", freeze=report), out)
        return out.getvalue()

    assert "frozen window 1 us\n" in result("thawed", None)
    cut = result("thawed-by-guardian", "deadline")
    assert "frozen window 1 us (the freeze did not hold" in cut


@pytest.mark.parametrize("pipe", [False, True], ids=["closed", "reader-gone"])
def test_status_with_its_stdout_gone_exits_0_without_a_traceback(pipe):
    """``quiesce status --json >&-`` (or into a pipe whose reader is gone): still exit 0, no traceback."""
    argv = " ".join(f"'{a}'" for a in [sys.executable, "-m", "quiesce", "status", "--json"])
    command = f"{argv} --run-dir {MISSING_RUN_DIR}"
    # With pipefail the pipeline's status is quiesce's: its reader exits at once, true's is 0.
    script = f"set -o pipefail; {command} | (exec 0<&-; true)" if pipe else f"{command} >&-"
    done = subprocess.run(
        ["/bin/bash", "-c", f"{script}; echo rc=$? >&2"], capture_output=True, text=True, timeout=60
    )
    assert "rc=0" in done.stderr and "Traceback" not in done.stderr, done.stderr
