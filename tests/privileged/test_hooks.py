"""The hook directory and session hooks in ``quiesce run``."""

from __future__ import annotations

import pytest

from quiesce.azure.verdict import APPLICATION, FAILED, FILESYSTEM
from quiesce.runner.run import run
from tests.fallbacks import FALLBACKS, IDS

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]

# The snapshot step logs the moment of the snapshot (a command inside the window).
SNAPSHOT = {"mode": "command", "argv": ["/bin/sh", "-c", "echo SNAPSHOT >> {log}"], "timeoutSeconds": 10}


def _with_snapshot(setup, **quiesce):
    snap = dict(SNAPSHOT, argv=[a.format(log=setup.log) for a in SNAPSHOT["argv"]])
    return {"snapshot": snap, **quiesce}


def test_hooks_run_in_name_order_before_and_reverse_after(setup):
    """Hooks run pre in name order after the pre-script, post in reverse before the post-script."""
    for name in ("30-c", "10-a", "20-b"):
        setup.hook(name, "exit 0\n")
    setup.config(quiesce=_with_snapshot(setup))
    r = run(setup.options())
    assert r.consistency == APPLICATION, r.message
    assert setup.events() == [
        "pre.sh 1  ",
        "10-a pre",
        "20-b pre",
        "30-c pre",
        "SNAPSHOT",
        "30-c post",
        "20-b post",
        "10-a post",
        "post.sh 1 ok ok",
    ]
    assert [p.name for p in r.phases] == [
        "checks",
        "pre-script",
        "hooks-pre",
        "freeze-window",
        "hooks-post",
        "post-script",
    ]
    assert [h.ok for h in r.hooks_pre] == [True] * 3 and [h.ok for h in r.hooks_post] == [True] * 3


def test_failing_middle_hook_stops_later_hooks_and_earlier_get_post(setup):
    """A failing pre hook: later hooks do not run; earlier ones still get their post step."""
    setup.hook("10-a", "exit 0\n")
    setup.hook("20-b", '[ "$1" = pre ] && exit 4; exit 0\n')
    setup.hook("30-c", "exit 0\n")
    setup.config(quiesce=_with_snapshot(setup))
    r = run(setup.options())
    assert setup.events() == [
        "pre.sh 1  ",
        "10-a pre",
        "20-b pre",
        "SNAPSHOT",
        "10-a post",
        "post.sh 1 ok ok",
    ]
    assert r.consistency == FILESYSTEM
    assert r.error_name == "Pre-ScriptExecutionFailed" and "20-b" in r.message
    setup.config(quiesce=_with_snapshot(setup), continueBackupOnFailure=False)
    r = run(setup.options())
    assert r.consistency == FAILED and "SNAPSHOT" not in setup.events()[-4:]


def test_leftovers_and_non_executables_are_skipped(setup):
    """Package-manager leftovers, backups and hidden files never run; a README is skipped with a warning."""
    setup.hook("10-a", "exit 0\n")
    for name in ("10-a.dpkg-old", "10-a.rpmnew", "10-a~", ".hidden"):
        setup.hook(name, "exit 1\n")
    setup.hook("README", "exit 1\n", mode=0o600)
    setup.config()
    r = run(setup.options())
    assert r.consistency == APPLICATION
    assert [e for e in setup.events() if not e.startswith(("pre.sh", "post.sh"))] == ["10-a pre", "10-a post"]
    assert any("README" in w and "not executable" in w for w in r.warnings)


def test_unsafe_hook_is_refused_with_the_azure_name(setup):
    """A group-writable hook fails its check (InsufficientPermissionforPre-Script) and never runs."""
    setup.hook("10-a", "exit 0\n", mode=0o770)
    setup.config()
    r = run(setup.options())
    assert r.error_name == "InsufficientPermissionforPre-Script"
    assert "10-a pre" not in setup.events()


SESSION = """
if [ "$1" = session ]; then
  echo "locked" >> {log}
  systemd-notify --ready || exit 9
  read line
  echo "unlocked" >> {log}
  exit 0
fi
"""


@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)
def test_session_hook_holds_across_the_window(fallback, setup):
    """A session hook is ready (systemd-notify) before the freeze and released after the thaw."""
    setup.hook("10-db.session", SESSION.format(log=setup.log))
    setup.config(quiesce=_with_snapshot(setup))
    r = run(setup.options())
    assert r.consistency == APPLICATION, r.message
    ev = setup.events()
    assert ev.index("locked") < ev.index("SNAPSHOT") < ev.index("unlocked")
    assert ev.index("unlocked") < ev.index("post.sh 1 ok ok")
    [released] = r.hooks_post
    assert released.ok and released.attempts[0].exit_code == 0


@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)
def test_session_hook_never_ready_times_out_and_is_killed(fallback, setup):
    """No READY=1 within timeoutInSeconds: killed, a pre failure, nothing frozen without continue."""
    setup.hook("10-db.session", "sleep 60\n")
    setup.config(quiesce=_with_snapshot(setup), timeoutInSeconds=1, continueBackupOnFailure=False)
    r = run(setup.options())
    assert r.consistency == FAILED and r.error_name == "Pre-ScriptTimeout"
    assert r.freeze is None and "SNAPSHOT" not in setup.events()


@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)
def test_session_hook_dying_in_the_window_downgrades_the_result(fallback, setup):
    """A session hook that dies while frozen: the application was not held; file-system-consistent."""
    body = 'if [ "$1" = session ]; then systemd-notify --ready; sleep 0.2; exit 1; fi\n'
    setup.hook("10-db.session", body)
    snap = {"mode": "command", "argv": ["/bin/sleep", "1"], "timeoutSeconds": 10}
    setup.config(quiesce={"snapshot": snap})
    r = run(setup.options())
    assert r.consistency == FILESYSTEM
    assert "died while frozen" in r.message
    assert r.hooks_post[0].status == "failed"


@pytest.mark.parametrize("fallback", FALLBACKS, ids=IDS, indirect=True)
def test_session_hook_ignoring_its_release_is_killed(fallback, setup):
    """A session hook that ignores stdin closing and SIGTERM is killed after the grace."""
    body = 'if [ "$1" = session ]; then trap "" TERM; systemd-notify --ready; while :; do sleep 1; done; fi\n'
    setup.hook("10-db.session", body)
    setup.config(quiesce={"graceSeconds": 0.2})
    r = run(setup.options())
    [released] = r.hooks_post
    assert released.status == "failed" and released.attempts[0].killed
    # Every hook must succeed for application-consistent; failures may continue: file-system.
    assert r.consistency == FILESYSTEM
    assert any("10-db.session" in w for w in r.warnings)
