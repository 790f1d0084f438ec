"""A hostile local user against quiesce running as root: run directories, ledgers, links, metrics.

Each test sets up what a non-root user can do (a directory chowned to
``nobody``, uid 65534, with links and files planted in it; a process run as
``nobody``) or what a stale or forged file in quiesce's own directory would
look like, and checks that root's quiesce neither follows, trusts, signals
nor writes anything because of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from quiesce.cli.exits import Exit
from quiesce.engine import ledger as ledger_mod
from quiesce.engine.freeze import Freeze, FreezeOptions
from quiesce.engine.frozen import frozen
from quiesce.engine.proof import start_time
from quiesce.errors import UnsafeRunDirError
from quiesce.runner.run import run
from tests.privileged.conftest import external_freeze, is_frozen, targets

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(60)]

NOBODY = 65534


@pytest.fixture
def base() -> Iterator[str]:
    """A root-only scratch directory under /run, removed after the test."""
    d = tempfile.mkdtemp(prefix="quiesce-test-hostile-", dir="/run")
    os.chmod(d, 0o755)  # so that nobody can reach what is chowned to it inside
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def victim_file(base: str) -> str:
    """A root-owned file a planted link points at: it must never change."""
    d = os.path.join(base, "secret")
    os.mkdir(d, 0o700)
    path = os.path.join(d, "precious")
    with open(path, "w") as f:
        f.write("precious\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A live process a forged ledger names: it must never be signalled."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def user_dir(base: str, name: str = "user") -> str:
    """A directory owned by nobody, as a local user's own would be."""
    d = os.path.join(base, name)
    os.mkdir(d, 0o755)
    os.chown(d, NOBODY, NOBODY)
    return d


def quiesce(run_dir: str | None, *args: str, env_dir: bool = False, timeout: float = 30):
    """Run ``python -m quiesce`` with ``--run-dir`` (or ``$QUIESCE_RUN_DIR`` when ``env_dir``)."""
    env = dict(os.environ)
    env.pop("QUIESCE_RUN_DIR", None)
    argv = [sys.executable, "-m", "quiesce", *args]
    if run_dir is not None and env_dir:
        env["QUIESCE_RUN_DIR"] = run_dir
    elif run_dir is not None:
        argv += ["--run-dir", run_dir]
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=timeout
    )


def read(path: str) -> str:
    """The text of ``path``."""
    with open(path) as f:
        return f.read()


def forged_ledger(pid: int, mounts: list[dict], **over) -> dict:
    """A ledger as a forger writes it: valid fields, naming ``pid`` with its real start time."""
    led = {
        "version": 2,
        "run_id": "20250101T000000Z-1",
        "pid": pid,
        "pid_start": start_time(pid),
        "guardian_pid": pid,
        "guardian_start": start_time(pid),
        "created_unix": time.time(),
        "timeout_s": 60.0,
        "filesystems": mounts,
        "rcu_expedited_restore": None,
        "token": "ab" * 16,
        "proof_fd": 3,
        "boot_id": ledger_mod.current_boot_id(),
    }
    led.update(over)
    return led


def plant(directory: str, name: str, data: dict, uid: int = 0, mode: int = 0o600) -> str:
    """Write ``data`` as JSON to ``directory/name`` with the given owner and mode."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(data, f)
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def mount_entry(f) -> dict:
    """The ledger entry of a sandbox filesystem (its real mount ID and device)."""
    (t,) = targets(f)
    return {
        "mount_point": t.mount.mount_point,
        "dev": t.mount.dev,
        "mount_id": t.mount.mount_id,
        "fstype": "ext4",
    }


# -- the run directory ------------------------------------------------------------


@pytest.mark.parametrize("name", ["lock", "guardian.log", "ledger.json", "last-report.json"])
def test_links_planted_in_a_user_run_dir_are_never_followed(fs, base, victim_file, name):
    """A user's run dir with a link where quiesce writes: refused before anything is frozen or written."""
    run_dir = user_dir(base)
    os.symlink(victim_file, os.path.join(run_dir, name))
    r = quiesce(run_dir, "freeze", "--hold", "--timeout", "5", str(fs["ext4"].mount_point), env_dir=True)
    assert r.returncode == Exit.ERROR, r.stdout + r.stderr
    assert f"run directory {run_dir} is unsafe" in r.stderr and "uid 65534" in r.stderr
    assert read(victim_file) == "precious\n"
    assert not is_frozen(fs["ext4"])


def _unsafe_dirs(base: str) -> dict[str, str]:
    owned = user_dir(base, "owned")
    open_dir = os.path.join(base, "world")
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o777)
    sticky = os.path.join(base, "sticky")
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    group = os.path.join(base, "group")
    os.mkdir(group)
    os.chmod(group, 0o770)
    parent = user_dir(base, "parent")
    inner = os.path.join(parent, "run")
    os.mkdir(inner, 0o700)  # root's, but its parent is the user's: they can swap it
    link_holder = user_dir(base, "links")
    root_dir = os.path.join(base, "rootonly")
    os.mkdir(root_dir, 0o700)
    link = os.path.join(link_holder, "run")
    os.symlink(root_dir, link)  # the user can re-point it
    return {
        "owned by nobody": owned,
        "mode 777": open_dir,
        "mode 1777": sticky,
        "group-writable": group,
        "under a user's directory": inner,
        "through a user's symlink": link,
        "missing, under a user's directory": os.path.join(parent, "new", "run"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "owned by nobody",
        "mode 777",
        "mode 1777",
        "group-writable",
        "under a user's directory",
        "through a user's symlink",
        "missing, under a user's directory",
    ],
)
@pytest.mark.parametrize("how", ["--run-dir", "QUIESCE_RUN_DIR"])
def test_a_run_dir_someone_else_can_change_is_refused(fs, base, kind, how):
    """Every way another user could control the run dir is refused by name; nothing is frozen or made."""
    run_dir = _unsafe_dirs(base)[kind]
    before = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else None
    r = quiesce(run_dir, "freeze", "--timeout", "5", str(fs["xfs"].mount_point), env_dir=how != "--run-dir")
    assert r.returncode == Exit.ERROR, r.stdout + r.stderr
    assert "is unsafe" in r.stderr and "fix:" in r.stderr
    assert not is_frozen(fs["xfs"])
    after = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else None
    assert after == before


def test_the_api_refuses_an_unsafe_run_dir(fs, base):
    """FreezeOptions(run_dir=...) of the Python API gets the same check: UnsafeRunDirError, nothing frozen."""
    run_dir = user_dir(base)
    with pytest.raises(UnsafeRunDirError), frozen(targets(fs["ext4"]), FreezeOptions(run_dir=run_dir)):
        pytest.fail("froze with a run directory another user owns")
    assert not is_frozen(fs["ext4"])
    assert os.listdir(run_dir) == []


def test_the_run_api_refuses_an_unsafe_run_dir_before_any_script(setup, base):
    """RunOptions(run_dir=...) too: UnsafeRunDirError before the pre-script runs or anything freezes."""
    setup.config()
    options = dataclasses.replace(setup.options(), run_dir=user_dir(base))
    with pytest.raises(UnsafeRunDirError, match="is unsafe"):
        run(options)
    assert setup.events() == []


def test_a_missing_run_dir_is_made_root_only_with_its_parents(fs, base):
    """A missing run dir and its missing parents are made mode 700, owned by root."""
    run_dir = os.path.join(base, "a", "b", "run")
    r = quiesce(run_dir, "freeze", "--timeout", "5", str(fs["btrfs"].mount_point))
    assert r.returncode == Exit.OK, r.stderr
    for d in (os.path.join(base, "a"), os.path.join(base, "a", "b"), run_dir):
        st = os.stat(d)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700), d
    for name in os.listdir(run_dir):
        st = os.lstat(os.path.join(run_dir, name))
        assert st.st_uid == 0 and st.st_mode & 0o077 == 0, name


def test_no_predictable_temp_name_is_followed(fs, run_dir, victim_file):
    """A link planted at the old predictable temp name (ledger.json.PID.tmp) is neither followed nor used."""
    planted = os.path.join(run_dir, f"ledger.json.{os.getpid()}.tmp")
    os.symlink(victim_file, planted)
    with frozen(targets(fs["ext4"]), FreezeOptions(timeout_s=10, run_dir=run_dir)):
        led = ledger_mod.read(run_dir)
        assert led is not None and led.pid == os.getpid()
    assert read(victim_file) == "precious\n"
    assert os.path.islink(planted)


# -- ledgers ---------------------------------------------------------------------------


def test_a_ledger_planted_in_a_user_dir_makes_thaw_do_nothing(fs, base, victim):
    """A user's run dir with a ledger naming a live process and a filesystem someone froze: refused."""
    run_dir = user_dir(base)
    plant(run_dir, "ledger.json", forged_ledger(victim.pid, [mount_entry(fs["ext4"])]), uid=NOBODY)
    external_freeze(fs["ext4"])
    try:
        for command in ("thaw", "recover"):
            r = quiesce(run_dir, command, env_dir=command == "thaw")
            assert r.returncode == Exit.ERROR, r.stdout + r.stderr
            assert "is unsafe" in r.stderr
        time.sleep(0.2)
        assert victim.poll() is None, "the process the ledger names was signalled"
    finally:
        assert is_frozen(fs["ext4"]), "thawed a filesystem another tool froze"


@pytest.mark.parametrize(
    ("owner", "mode", "why"),
    [(NOBODY, 0o600, "owned by uid 65534"), (0, 0o644, "group or other"), (0, 0o666, "group or other")],
)
def test_a_ledger_not_written_by_quiesce_is_not_trusted(fs, run_dir, victim, owner, mode, why):
    """In its own run dir, a ledger of another owner or with open mode bits is refused: no signal, no thaw."""
    plant(run_dir, "ledger.json", forged_ledger(victim.pid, [mount_entry(fs["xfs"])]), uid=owner, mode=mode)
    external_freeze(fs["xfs"])
    try:
        for command in ("thaw", "recover"):
            r = quiesce(run_dir, command)
            assert r.returncode == Exit.ERROR, r.stdout + r.stderr
            assert "not trusted" in r.stderr and why in r.stderr
        assert victim.poll() is None
    finally:
        assert is_frozen(fs["xfs"]), "thawed a filesystem another tool froze"


def test_a_ledger_that_is_a_link_is_not_followed(fs, run_dir, base, victim):
    """ledger.json as a symlink (even to a root-only, mode-600 ledger) is refused."""
    elsewhere = os.path.join(base, "elsewhere")
    os.mkdir(elsewhere, 0o700)
    target = plant(elsewhere, "ledger.json", forged_ledger(victim.pid, [mount_entry(fs["ext4"])]))
    os.symlink(target, os.path.join(run_dir, "ledger.json"))
    r = quiesce(run_dir, "thaw")
    assert r.returncode == Exit.ERROR and "symlink" in r.stderr
    assert victim.poll() is None


def test_a_live_process_named_by_a_ledger_is_signalled_only_with_its_proof(fs, run_dir, victim):
    """A root-written, well-formed ledger naming a live process (right pid and start time) signals nothing.

    Only the process that holds the ledger's proof (the freeze that wrote
    it) is released; this one is not, so it is left alone.
    """
    plant(run_dir, "ledger.json", forged_ledger(victim.pid, [mount_entry(fs["btrfs"])]))
    r = quiesce(run_dir, "thaw", "--json", "--wait", "1")
    time.sleep(0.2)
    assert victim.poll() is None, f"signalled a process that is not the ledger's holder: {r.stdout}"
    assert "released" not in json.loads(r.stdout)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rcu_expedited_restore", "x"),
        ("rcu_expedited_restore", "1\n0"),
        ("pid", True),
        ("pid", -1),
        ("timeout_s", "60"),
        ("run_id", "../../etc"),
        ("boot_id", "not-a-boot-id"),
        ("token", "short"),
        ("surprise", 1),
    ],
)
def test_every_ledger_field_is_validated(fs, run_dir, field, value):
    """A root-owned mode-600 ledger with one bad field is refused by name; nothing is thawed or written."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    led = forged_ledger(dead.pid, [mount_entry(fs["ext4"])], pid_start=1, guardian_start=1)
    led[field] = value
    plant(run_dir, "ledger.json", led)
    external_freeze(fs["ext4"])
    try:
        r = quiesce(run_dir, "thaw")
        assert r.returncode == Exit.ERROR, r.stdout + r.stderr
        assert "ledger" in r.stderr and (field in r.stderr or "unknown keys" in r.stderr)
    finally:
        assert is_frozen(fs["ext4"]), "thawed on a ledger that failed validation"


@pytest.mark.parametrize(
    ("entry", "word"),
    [
        ({"mount_point": "relative/path"}, "absolute"),
        ({"dev": "8-1"}, "dev"),
        ({"mount_id": "42"}, "mount_id"),
    ],
)
def test_every_filesystem_entry_is_validated(fs, run_dir, entry, word):
    """A bad mount point, device or mount ID in a filesystem entry refuses the whole ledger."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    fs_entry = {**mount_entry(fs["xfs"]), **entry}
    plant(run_dir, "ledger.json", forged_ledger(dead.pid, [fs_entry], pid_start=1, guardian_start=1))
    r = quiesce(run_dir, "recover")
    assert r.returncode == Exit.ERROR and word in r.stderr, r.stdout + r.stderr


# -- metrics ------------------------------------------------------------------------------


def test_metrics_into_a_user_directory_are_refused_and_the_run_stands(setup, base):
    """--metrics into a directory nobody owns: a named error on stderr, no file, the run's result kept."""
    setup.config()
    metrics_dir = user_dir(base, "textfile")
    path = os.path.join(metrics_dir, "quiesce.prom")
    r = setup.cli("--metrics", path, "--log-format", "none", "--json")
    assert r.returncode == Exit.OK, r.stderr
    assert json.loads(r.stdout)["consistency"] == "application-consistent"
    assert "metrics directory" in r.stderr and "is unsafe" in r.stderr
    assert os.listdir(metrics_dir) == []


def test_metrics_replace_a_planted_link_without_following_it(setup, victim_file):
    """A link at the metrics file's name is replaced by the file; what it pointed at is untouched."""
    setup.config()
    path = os.path.join(setup.base, "quiesce.prom")
    os.symlink(victim_file, path)
    r = setup.cli("--metrics", path, "--log-format", "none")
    assert r.returncode == Exit.OK, r.stderr
    assert not os.path.islink(path) and "quiesce_last_window_seconds" in read(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert read(victim_file) == "precious\n"


# -- the guardian's log ----------------------------------------------------------------------


def test_the_guardian_log_is_not_followed_even_in_a_root_run_dir(fs, run_dir, victim_file):
    """guardian.log as a link in quiesce's own dir: the freeze runs, the link's target is untouched."""
    os.symlink(victim_file, os.path.join(run_dir, "guardian.log"))
    f = Freeze(targets(fs["ext4"]), FreezeOptions(timeout_s=0.3, run_dir=run_dir))
    with f:
        f.prepare()
        f.freeze()
        time.sleep(0.6)  # the guardian thaws at its deadline and writes its log lines
    assert f.report.guardian_reason == "deadline"
    assert read(victim_file) == "precious\n"


def test_signals_to_a_real_holder_go_through_its_pidfd(fs, run_dir):
    """A genuine ``freeze --hold`` still is released by ``quiesce thaw`` (the proof holds)."""
    held = quiesce(run_dir, "freeze", "--hold", "--json", "--timeout", "20", str(fs["ext4"].mount_point))
    assert held.returncode == Exit.OK, held.stderr
    r = quiesce(run_dir, "thaw", "--json")
    assert r.returncode == Exit.OK, r.stderr
    assert json.loads(r.stdout)["released"] == json.loads(held.stdout)["pid"]
    assert json.loads(r.stdout)["report"]["released_by"] == "signal SIGUSR1"
