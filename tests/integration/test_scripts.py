"""Script supervision with real child processes: retries, timeouts, kills, output, environment."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time

import pytest

from quiesce.runner.signals import Interrupts, RunInterrupted
from quiesce.supervise.checked import open_script
from quiesce.supervise.scripts import ScriptPolicy, ScriptRunner, run_script
from tests.fallbacks import forced
from tests.processes import alive_with, unique_sleep

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True, params=["", "no-pidfd"], ids=["pidfd", "no-pidfd"])
def watching(request, monkeypatch):
    """Every test twice: children watched through pidfds, and by pid (QUIESCE_FALLBACK=no-pidfd)."""
    yield from forced(request.param, monkeypatch)


@pytest.fixture
def secure_dir():
    """A root-only directory under /run, where script permission checks pass."""
    if os.geteuid() != 0:
        pytest.skip("scripts must be owned by root: needs root")
    d = tempfile.mkdtemp(dir="/run", prefix="quiesce-test-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_script(secure_dir):
    """Write a root-owned 0700 script and open it as the checked script of ``phase``."""
    opened = []

    def make(body: str, phase: str = "pre", name: str = "script.sh", shebang: bool = True):
        path = os.path.join(secure_dir, name)
        with open(path, "w") as f:
            f.write(("#!/bin/sh\n" if shebang else "") + body)
        os.chmod(path, 0o700)
        checked = open_script(path, phase)
        opened.append(checked)
        return checked

    yield make
    for c in opened:
        c.close()


def test_success_output_and_clean_environment(make_script, monkeypatch):
    """Exit 0 is ok in one attempt; output captured; the environment is the documented one only."""
    monkeypatch.setenv("LEAKED_SECRET", "x")
    s = make_script('echo "out:$QUIESCE_PHASE:$QUIESCE_ATTEMPT:$1:$2"; echo err >&2; env | sort\n')
    r = run_script(s, ["a b", ""], ScriptPolicy(timeout_s=10), env={"QUIESCE_SNAPSHOT": "ok"})
    assert r.ok and r.status == "ok" and len(r.attempts) == 1
    a = r.attempts[0]
    assert a.exit_code == 0 and a.outcome == "ok"
    assert a.stdout.startswith("out:pre:1:a b:\n")
    assert a.stderr == "err\n"
    env = dict(line.split("=", 1) for line in a.stdout.splitlines()[1:] if "=" in line)
    assert "LEAKED_SECRET" not in env
    assert env["QUIESCE_SNAPSHOT"] == "ok" and env["QUIESCE_SCRIPT"] == s.path
    assert env["PATH"].startswith("/usr/local/sbin")
    assert abs(int(env["QUIESCE_DEADLINE_MS"]) - (time.time() + 10) * 1000) < 5000
    assert r.error_name is None


def test_failure_is_retried_with_new_processes(make_script):
    """N retries are N real re-runs, each a new process; the last failure names the Azure error."""
    s = make_script("echo $$; exit 3\n", phase="post")
    r = run_script(s, [], ScriptPolicy(timeout_s=10, retries=2))
    assert r.status == "failed" and len(r.attempts) == 3
    pids = {a.stdout.strip() for a in r.attempts}
    assert len(pids) == 3
    assert [a.exit_code for a in r.attempts] == [3, 3, 3]
    assert (r.error_name, r.error_code) == ("Post-ScriptExecutionFailed", 301)
    assert "exit status 3" in r.message


def test_retry_stops_at_the_first_success(make_script, secure_dir):
    """A script that fails once and then succeeds ends ok after two attempts."""
    counter = os.path.join(secure_dir, "count")
    s = make_script(f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ "$n" -ge 1 ]\n')
    r = run_script(s, [], ScriptPolicy(timeout_s=10, retries=5))
    assert r.ok and [a.outcome for a in r.attempts] == ["failed", "ok"]
    assert [a.number for a in r.attempts] == [1, 2]


def test_backoff_between_attempts(make_script):
    """The configured backoff is slept between attempts, not before the first."""
    slept = []
    s = make_script("exit 1\n")
    run_script(s, [], ScriptPolicy(timeout_s=5, retries=2, backoff_s=0.25), sleep=slept.append)
    assert slept == [0.25, 0.25]


def test_timeout_sends_sigterm_at_the_deadline(make_script):
    """A script past its timeout gets SIGTERM at the deadline and the Azure timeout error."""
    s = make_script("sleep 30\n")
    started = time.monotonic()
    r = run_script(s, [], ScriptPolicy(timeout_s=0.3, grace_s=5))
    elapsed = time.monotonic() - started
    a = r.attempts[0]
    assert r.status == "timeout" and a.timed_out and not a.killed
    assert a.signal == "SIGTERM"
    assert (r.error_name, r.error_code) == ("Pre-ScriptTimeout", 308)
    assert 0.3 <= elapsed < 3


def test_sigterm_ignoring_tree_is_killed_after_the_grace(make_script):
    """A tree that ignores SIGTERM, with a setsid escapee, is SIGKILLed after the grace; nothing survives."""
    marker = unique_sleep()
    s = make_script(
        f"trap '' TERM\nsetsid sh -c 'trap \"\" TERM; sleep {marker}' &\n"
        f"sh -c 'trap \"\" TERM; sleep {marker}'\n"
    )
    r = run_script(s, [], ScriptPolicy(timeout_s=0.3, grace_s=0.3))
    a = r.attempts[0]
    assert r.status == "timeout" and a.timed_out and a.killed
    assert a.signal == "SIGKILL"
    assert 0.6e9 <= a.duration_ns < 0.6e9 + 1e9
    assert a.isolation == "cgroup"
    assert alive_with(marker) == []


def test_descendant_holding_stdout_does_not_hold_up_the_run(make_script):
    """A daemon that keeps the output pipe open neither delays the result nor survives."""
    marker = unique_sleep()
    s = make_script(f"setsid sleep {marker} &\necho started\nexit 0\n")
    started = time.monotonic()
    r = run_script(s, [], ScriptPolicy(timeout_s=20))
    assert time.monotonic() - started < 5
    a = r.attempts[0]
    assert r.ok and a.stdout == "started\n"
    assert a.leftovers_killed == 1
    assert alive_with(marker) == []


def test_huge_output_is_drained_and_only_the_tail_kept(make_script):
    """100 MB of output neither blocks the script nor is kept whole: the tail and the count are."""
    s = make_script("head -c 104857600 /dev/zero | tr '\\0' 'x'; echo END\n")
    r = run_script(s, [], ScriptPolicy(timeout_s=30, output_tail=4096))
    a = r.attempts[0]
    assert r.ok
    assert a.stdout_bytes == 104857600 + 4
    assert a.stdout_truncated and len(a.stdout) == 4096 and a.stdout.endswith("xxx\nEND\n"[-4:])


def test_script_without_shebang_runs_with_sh(make_script):
    """A file without #! runs with /bin/sh, from the checked fd."""
    s = make_script("echo plain:$#\n", shebang=False)
    r = run_script(s, ["x"], ScriptPolicy(timeout_s=10))
    assert r.ok and r.attempts[0].stdout == "plain:1\n"


def test_stdin_is_dev_null(make_script):
    """A script reading stdin sees EOF at once instead of hanging the run."""
    s = make_script('read line; echo "[$?]"\n')
    r = run_script(s, [], ScriptPolicy(timeout_s=5))
    assert r.ok and r.attempts[0].stdout == "[1]\n"


def test_exit_by_signal_is_a_failure(make_script):
    """A script killed by a signal fails and names the signal."""
    s = make_script("kill -KILL $$\n")
    r = run_script(s, [], ScriptPolicy(timeout_s=5))
    assert r.status == "failed" and r.attempts[0].signal == "SIGKILL"
    assert "signal SIGKILL" in r.message


def test_the_checked_file_runs_even_if_the_path_is_swapped(make_script, secure_dir):
    """Replacing the file after the check does not change what runs: the fd was checked."""
    s = make_script("echo original\n")
    evil = os.path.join(secure_dir, "evil")
    with open(evil, "w") as f:
        f.write("#!/bin/sh\necho swapped\n")
    os.chmod(evil, 0o700)
    os.rename(evil, s.path)
    r = run_script(s, [], ScriptPolicy(timeout_s=5))
    assert r.attempts[0].stdout == "original\n"


def test_progress_is_reported_while_running(make_script):
    """A progress callback sees the step's label, the attempt, the elapsed time and the timeout."""
    seen = []
    s = make_script("sleep 0.35\n")
    run_script(s, [], ScriptPolicy(timeout_s=7), progress=lambda *call: seen.append(call))
    assert len(seen) >= 2
    assert all(label == f"{s.phase}-script" and n == 1 and t == 7_000_000_000 for label, n, _, t in seen)
    assert seen == sorted(seen)


def test_no_fd_leak(make_script):
    """Runs leave no file descriptor behind."""
    s = make_script("echo x\n")
    run_script(s, [], ScriptPolicy(timeout_s=5))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        run_script(s, [], ScriptPolicy(timeout_s=5, retries=0))
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.fixture
def no_cgroup(monkeypatch, watching):
    """Run scripts as on a machine without a writable cgroup v2: process-group fallback."""
    yield from forced("no-cgroup", monkeypatch)


def test_fallback_timeout_kills_the_process_group(make_script, no_cgroup):
    """Without a cgroup, a SIGTERM-ignoring tree (no setsid) is killed through its process group."""
    marker = unique_sleep()
    s = make_script(f"trap '' TERM\nsh -c 'trap \"\" TERM; sleep {marker}' &\nwait\n")
    r = run_script(s, [], ScriptPolicy(timeout_s=0.3, grace_s=0.3))
    a = r.attempts[0]
    assert a.isolation == "process-group"
    assert r.status == "timeout" and a.killed and a.signal == "SIGKILL"
    _gone(marker)


def _gone(marker: str, within_s: float = 5.0) -> None:
    """Every process with ``marker`` ends within ``within_s`` (a SIGKILL takes effect asynchronously)."""
    deadline = time.monotonic() + within_s
    while alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive_with(marker) == []


def test_a_stop_handled_on_another_thread_ends_the_wait(make_script):
    """A stop signal that only another thread can take still ends a script's wait at once.

    The waiting thread blocks SIGTERM, so no EINTR can tell its wait; the
    handler's byte in the wake-up pipe must. The script is then killed.
    """
    marker = unique_sleep(30)
    s = make_script(f"sleep {marker}\n")

    def send() -> None:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send)
    sender.start()  # before the mask: this thread can take the signal, the waiting one cannot
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    started = time.monotonic()
    try:
        with Interrupts(True) as interrupts, pytest.raises(RunInterrupted) as stopped:
            ScriptRunner(interruptible=interrupts.interruptible).run(s, [], ScriptPolicy(timeout_s=60))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        sender.join()
    assert stopped.value.signum == signal.SIGTERM
    assert time.monotonic() - started < 10
    _gone(marker)


def test_fallback_retries_and_output(make_script, no_cgroup):
    """Retries, exit status and output capture are the same without a cgroup."""
    s = make_script("echo $$; exit 4\n")
    r = run_script(s, [], ScriptPolicy(timeout_s=5, retries=1))
    assert [a.exit_code for a in r.attempts] == [4, 4]
    assert len({a.stdout for a in r.attempts}) == 2
    assert all(a.isolation == "process-group" for a in r.attempts)


def test_fallback_leftover_in_the_group_is_killed(make_script, no_cgroup):
    """Without a cgroup, a background child left in the script's group is killed after it exits."""
    marker = unique_sleep()
    s = make_script(f"sleep {marker} >/dev/null 2>&1 &\nexit 0\n")
    r = run_script(s, [], ScriptPolicy(timeout_s=5))
    assert r.ok
    _gone(marker)


def test_many_children_ignoring_sigterm_end_within_timeout_grace_and_50ms(make_script):
    """A script forking 50 SIGTERM-ignoring children: killed by timeout + grace + 50 ms, none survive."""
    marker = unique_sleep()
    s = make_script(
        "trap '' TERM\n"
        f"for i in $(seq 50); do sh -c \"trap '' TERM; exec sleep {marker}\" & done\n"
        f"sleep {marker}\n"
    )
    r = run_script(s, [], ScriptPolicy(timeout_s=0.3, grace_s=0.2))
    a = r.attempts[0]
    assert r.status == "timeout" and a.killed
    assert a.duration_ns <= (0.3 + 0.2 + 0.05) * 1e9, f"{a.duration_ns / 1e6:.1f} ms"
    assert alive_with(marker) == []


def test_script_closing_stdout_early_still_reports(make_script):
    """A script that closes stdout and stderr early and goes on: its exit is still seen and reported."""
    s = make_script("echo before\nexec >&- 2>&-\nsleep 0.2\nexit 3\n")
    r = run_script(s, [], ScriptPolicy(timeout_s=5))
    a = r.attempts[0]
    assert a.exit_code == 3 and a.stdout == "before\n"
    assert 0.2e9 <= a.duration_ns < 2e9


def test_endless_output_is_cut_by_the_timeout(make_script):
    """A script printing forever is drained without blocking and killed at its timeout."""
    s = make_script("trap '' TERM\nyes quiesce\n")
    r = run_script(s, [], ScriptPolicy(timeout_s=0.5, grace_s=0.1, output_tail=1024))
    a = r.attempts[0]
    assert r.status == "timeout" and a.killed
    assert a.stdout_bytes > 1024 and a.stdout_truncated and len(a.stdout) == 1024
    assert a.duration_ns <= (0.5 + 0.1 + 0.05) * 1e9
