"""quiesce's own output never decides a run: broken pipes, closed or full streams are recorded, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from quiesce.cli.exits import Exit
from quiesce.engine import ledger as ledger_mod
from tests.privileged.conftest import Writer

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def _communicate(proc: subprocess.Popen, timeout: float = 60) -> None:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _assert_thawed(setup, fs) -> None:
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()
    assert ledger_mod.read(setup.run_dir) is None


@pytest.mark.parametrize("json_mode", [True, False])
def test_hold_with_stdouts_reader_gone_still_thaws_and_runs_the_post_script(setup, fs, json_mode):
    """Hold mode, the snapshotter's pipe closed: the window ends at once, the post-script runs, exit 9."""
    setup.config(pre="sleep 0.5\n", quiesce={"snapshot": {"mode": "hold"}})
    args = ("--json",) if json_mode else ()
    proc = subprocess.Popen(
        setup.run_argv(*args, "--log-format", "plain"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before "frozen" is announced
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = err.decode()
    assert proc.returncode == Exit.BACKUP_FAILED, err
    assert "Traceback" not in err
    assert setup.events() == ["pre.sh 1  ", "post.sh 1 failed ok"]
    assert "announcement failed" in err and "EPIPE" in err
    _assert_thawed(setup, fs)


def test_text_mode_with_stderrs_reader_gone_finishes_the_run(setup):
    """Progress lines to a closed stderr pipe: a warning; the run, the post-script and exit 0 stand."""
    setup.config(pre="sleep 3.5\n")
    proc = subprocess.Popen(
        setup.run_argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.stderr.close()  # gone before the first progress line (after 3 s)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == Exit.OK, out
    assert "result: application-consistent" in out
    assert "output: stderr: EPIPE" in out
    assert setup.events() == ["pre.sh 1  ", "post.sh 1 ok ok"]


@pytest.mark.parametrize("redirect", [">&-", "2>&-", "2>/dev/full", ">/dev/full", ">&- 2>&-"])
def test_closed_or_full_std_streams_change_nothing(setup, fs, redirect):
    """stdout or stderr closed (EBADF) or full (ENOSPC): exit 0, the post-script ran, nothing left frozen."""
    setup.config()
    argv = " ".join(f"'{a}'" for a in setup.run_argv("--log-format", "plain"))
    script = f"exec {argv} {redirect} </dev/null"
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == Exit.OK, done.stderr
    assert "Traceback" not in done.stderr
    assert setup.events() == ["pre.sh 1  ", "post.sh 1 ok ok"]
    _assert_thawed(setup, fs)


def test_closed_stdout_in_json_mode_keeps_the_exit_status(setup):
    """``--json >&-`` on a failing backup: exit 9 still, no traceback."""
    setup.config(pre="exit 1\n", continueBackupOnFailure=False)
    argv = " ".join(f"'{a}'" for a in setup.run_argv("--json"))
    done = subprocess.run(
        ["/bin/sh", "-c", f"exec {argv} >&- </dev/null"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == Exit.BACKUP_FAILED, done.stderr
    assert "Traceback" not in done.stderr
    assert setup.events()[-1] == "post.sh 1 skipped failed"


def test_metrics_on_a_full_filesystem_is_recorded_not_fatal(setup):
    """--metrics on a full filesystem (ENOSPC): said on stderr; the run's exit status stands."""
    setup.config()
    # Under /run: a metrics directory others could write (as below /tmp) is refused outright.
    full = tempfile.mkdtemp(prefix="quiesce-full-", dir="/run")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", full], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/fill", "bs=4k"], capture_output=True)
        done = setup.cli("--metrics", os.path.join(full, "quiesce.prom"), "--json")
        assert done.returncode == Exit.OK, done.stderr
        assert json.loads(done.stdout)["consistency"] == "application-consistent"
        assert "cannot write metrics" in done.stderr and "Traceback" not in done.stderr
        assert setup.events()[-1] == "post.sh 1 ok ok"
    finally:
        subprocess.run(["umount", full], check=False)
        os.rmdir(full)


def test_freeze_with_stdout_closed_ends_the_hold_at_once(fs, run_dir):
    """``quiesce freeze >&-``: nobody can be told it is frozen; thawed at once, exit 1, no traceback."""
    target = str(fs["ext4"].mount_point)
    argv = [
        sys.executable,
        "-m",
        "quiesce",
        "freeze",
        "--json",
        "--run-dir",
        run_dir,
        "--timeout",
        "20",
        target,
    ]
    script = " ".join(f"'{a}'" for a in argv) + " >&- </dev/null"
    started = time.monotonic()
    done = subprocess.run(["/bin/sh", "-c", f"exec {script}"], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 10, "held until the deadline"
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "stdout" in done.stderr
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()
    assert ledger_mod.read(run_dir) is None


@pytest.mark.parametrize("json_mode", [True, False], ids=["json", "text"])
def test_hold_with_stdout_closed_freezes_nothing(fs, run_dir, json_mode):
    """``quiesce freeze --hold >&-``: nobody could be told it is frozen; nothing frozen, exit 1."""
    argv = [sys.executable, "-m", "quiesce", "freeze", "--hold", "--run-dir", run_dir, "--timeout", "20"]
    argv += ["--json"] if json_mode else []
    script = " ".join(f"'{a}'" for a in [*argv, str(fs["ext4"].mount_point)]) + " >&- </dev/null"
    done = subprocess.run(["/bin/sh", "-c", f"exec {script}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "stdout is closed" in done.stderr
    assert ledger_mod.read(run_dir) is None
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()


def test_hold_whose_frozen_line_cannot_be_written_is_released_at_once(fs, run_dir):
    """``quiesce freeze --hold`` whose stdout's reader is gone: the holder is released at once, exit 1.

    Exit 0 means frozen and told; a caller that got no "frozen" takes no
    snapshot and calls no ``quiesce thaw``, so the window must not stay open.
    """
    argv = [sys.executable, "-m", "quiesce", "freeze", "--hold", "--json", "--run-dir", run_dir]
    proc = subprocess.Popen(
        [*argv, "--timeout", "20", str(fs["ext4"].mount_point)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the holder has frozen
    started = time.monotonic()
    err = proc.stderr.read()
    proc.stderr.close()
    proc.wait(timeout=30)
    assert time.monotonic() - started < 10, "held until the deadline"
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "released at once" in err
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()
    assert ledger_mod.read(run_dir) is None


@pytest.mark.parametrize("json_mode", [True, False], ids=["json", "text"])
def test_thaw_exit_status_stands_whatever_happens_to_its_stdout(fs, run_dir, json_mode):
    """``quiesce thaw >&-`` or into a closed pipe: its exit status (0, or 5 after the deadline) stands."""
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    target = str(fs["ext4"].mount_point)
    thaw = [sys.executable, "-m", "quiesce", "thaw", *(["--json"] if json_mode else [])]
    quoted = " ".join(f"'{a}'" for a in thaw)

    def hold(timeout: str) -> None:
        held = subprocess.run(
            [sys.executable, "-m", "quiesce", "freeze", "--hold", "--timeout", timeout, target],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert held.returncode == Exit.OK, held.stderr

    hold("20")
    closed = subprocess.run(["/bin/sh", "-c", f"exec {quoted} >&-"], capture_output=True, text=True, env=env)
    assert closed.returncode == Exit.OK, closed.stderr
    assert "Traceback" not in closed.stderr and ledger_mod.read(run_dir) is None
    hold("0.3")
    time.sleep(1)
    piped = subprocess.Popen(thaw, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    piped.stdout.close()  # the reader is gone
    err = piped.stderr.read()
    piped.stderr.close()
    assert piped.wait(timeout=30) == Exit.GUARDIAN_THAWED, err
    assert "Traceback" not in err
    w = Writer(fs["ext4"])
    assert w.finished_within(5), "left frozen"
    w.finish()
