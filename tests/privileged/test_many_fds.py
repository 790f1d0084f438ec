"""quiesce embedded in a process holding 2,000 open files: every fd it opens is numbered above 1024.

``select()`` fails there (``ValueError: filedescriptor out of range``); each
wait on a pidfd, a pipe or a socket must work all the same: a script's
attempt, a session hook's readiness and release, a hold's release, a
holder's pidfd, the bench's helpers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from quiesce.azure.verdict import APPLICATION
from quiesce.bench.helpers import Probe
from quiesce.engine.proof import pidfd_exited, wait_pidfd
from quiesce.runner.run import run
from quiesce.runner.types import RunOptions
from quiesce.supervise.checked import open_script
from quiesce.supervise.scripts import ScriptPolicy, run_script

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def test_a_script_runs_with_fds_above_1024(many_fds, setup):
    """A script attempt (its pidfd and pipes above 1024) runs, is supervised and cleaned up."""
    script = open_script(setup.script("s.sh", "echo out\nexit 3\n"), "pre")
    with script:
        assert script.fd > 1024
        result = run_script(script, [], ScriptPolicy(timeout_s=10, retries=1))
    assert [a.exit_code for a in result.attempts] == [3, 3]
    assert result.attempts[0].stdout == "out\n" and result.status == "failed"


def test_a_run_with_a_session_hook_and_a_hold_with_fds_above_1024(many_fds, setup):
    """The whole run: pre-script, a hook, a session hook's READY=1 and release, a hold released by SIGUSR1."""
    setup.hook("10-plain", "exit 0\n")
    session = 'if [ "$1" = session ]; then\n  systemd-notify --ready\n  read line\n  exit 0\nfi\n'
    setup.hook("20-db.session", session)
    setup.config(quiesce={"snapshot": {"mode": "hold"}})
    announced = []

    def on_hold(news):
        announced.append(news)
        # The release comes while the hold waits on its (high-numbered) wake-up pipe.
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()

    opts = setup.options()
    options = RunOptions(**{**opts.__dict__, "on_hold": on_hold, "hold_stdin": False})
    result = run(options)
    assert result.consistency == APPLICATION, (result.message, result.warnings)
    assert result.released_by == "signal SIGUSR1" and announced[0].frozen
    assert [r.ok for r in result.hooks_pre] == [True, True]
    assert [r.ok for r in result.hooks_post] == [True, True]
    assert setup.events()[-1] == "post.sh 1 ok ok"


def test_a_holders_pidfd_is_waited_on_with_fds_above_1024(many_fds):
    """``quiesce thaw``'s wait for a holder's pidfd (numbered above 1024)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    pidfd = os.pidfd_open(proc.pid)
    try:
        assert pidfd > 1024
        assert not pidfd_exited(pidfd)
        assert wait_pidfd(pidfd, 30)
        assert pidfd_exited(pidfd)
    finally:
        os.close(pidfd)
        proc.wait()


def test_the_bench_probe_talks_with_fds_above_1024(many_fds, tmp_path):
    """The bench's helper processes answer on pipes numbered above 1024."""
    probe = Probe(str(tmp_path))
    probe.wait_ready(lambda: False)
    result = probe.collect(30, 0, [])
    assert result.error is None and result.iterations > 0
