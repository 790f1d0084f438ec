"""`quiesce run`'s progress lines off a terminal: paced by ScriptsExecutionPollTimeSeconds, step named."""

from __future__ import annotations

import itertools

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def progress_lines(stderr: str, step: str) -> list[str]:
    """The progress lines of one step."""
    return [line for line in stderr.splitlines() if line.startswith(f"{step}: attempt 1,")]


def elapsed_s(line: str) -> float:
    """The elapsed seconds a progress line reports ("pre-script: attempt 1, 2.00 s of 30.00 s")."""
    return float(line.split(", ")[1].split(" ")[0])


def test_poll_time_paces_the_progress_lines(setup):
    """Poll 1 s and a 2.5 s pre-script: lines about 1 s apart; the 3 s default gives none for 1.5 s."""
    setup.config(pre="sleep 2.5\n", ScriptsExecutionPollTimeSeconds=1)
    r = setup.cli("--log-format", "none")
    assert r.returncode == 0, r.stderr
    lines = progress_lines(r.stderr, "pre-script")
    assert len(lines) >= 2, r.stderr
    times = [elapsed_s(line) for line in lines]
    assert times[0] >= 1.0 and all(b - a >= 0.99 for a, b in itertools.pairwise(times)), lines
    setup.config(pre="sleep 1.5\n")
    r = setup.cli("--log-format", "none")
    assert r.returncode == 0, r.stderr
    assert progress_lines(r.stderr, "pre-script") == [], r.stderr


def test_hooks_and_session_waits_report_progress_by_name(setup):
    """A slow hook and a slow-to-be-ready session hook each get lines naming them."""
    setup.hook("10-slow", "sleep 1.5\n")
    setup.hook(
        "20-db.session", '[ "$1" = session ] && { sleep 1.5; systemd-notify --ready; read x; }\nexit 0\n'
    )
    setup.config(ScriptsExecutionPollTimeSeconds=1)
    r = setup.cli("--log-format", "none")
    assert r.returncode == 0, r.stderr
    assert progress_lines(r.stderr, "hook 10-slow pre"), r.stderr
    assert progress_lines(r.stderr, "session hook 20-db.session: waiting for READY"), r.stderr
