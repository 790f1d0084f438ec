"""What quiesce trusts: ledger fields, run directories, proofs, notify senders, escaped lists."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from quiesce._native import lib

from quiesce.engine import ledger as ledger_mod
from quiesce.engine.mountinfo import escape_path, parse_mountinfo
from quiesce.engine.proof import (
    PROOF_DEADLINE_AT,
    PROOF_FROZEN,
    PROOF_THAWED,
    Proof,
    open_proven,
    proof_deadline_ns,
    start_time,
)
from quiesce.engine.rundir import RunDir, atomic_write
from quiesce.errors import LedgerError, UnsafeRunDirError, UntrustedFileError
from quiesce.runner.logs import log_lines
from quiesce.runner.types import RunResult
from quiesce.supervise.cgroups import delegated_cgroup
from quiesce.supervise.notify import in_cgroup, in_session
from quiesce.supervise.procs import cgroup_of


def _valid() -> dict:
    return {
        "version": 2,
        "run_id": "20250101T000000Z-42",
        "pid": 42,
        "pid_start": 1000,
        "guardian_pid": 43,
        "guardian_start": 1001,
        "created_unix": 1.7e9,
        "timeout_s": 60,
        "filesystems": [{"mount_point": "/data", "dev": "8:1", "mount_id": 30, "fstype": "xfs"}],
        "rcu_expedited_restore": "0",
        "token": "0f" * 16,
        "proof_fd": 5,
        "boot_id": "01234567-89ab-cdef-0123-456789abcdef",
    }


def test_a_valid_ledger_is_read_back():
    """Every field of a well-formed ledger survives; a JSON int timeout is a float."""
    led = ledger_mod.Ledger.from_dict(_valid())
    assert led.pid == 42 and led.timeout_s == 60.0 and led.rcu_expedited_restore == "0"
    assert led.filesystems[0].dev == "8:1"
    assert ledger_mod.Ledger.from_dict(json.loads(json.dumps(led.to_dict()))) == led


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("version", 1),
        ("pid", 0),
        ("pid", True),
        ("pid", 1 << 23),
        ("pid", "42"),
        ("pid_start", -1),
        ("guardian_pid", None),
        ("timeout_s", float("nan")),
        ("timeout_s", 0),
        ("created_unix", "now"),
        ("rcu_expedited_restore", "2"),
        ("rcu_expedited_restore", 1),
        ("rcu_expedited_restore", "1\n"),
        ("token", "0F" * 16),
        ("token", "0f" * 15),
        ("proof_fd", -1),
        ("boot_id", "x" * 36),
        ("run_id", "a/b"),
        ("run_id", ""),
        ("filesystems", []),
        ("filesystems", {}),
        ("unknown", 1),
    ],
)
def test_every_bad_field_refuses_the_ledger(key, value):
    """One field out of type or range makes the whole ledger a named LedgerError."""
    d = _valid()
    d[key] = value
    with pytest.raises(LedgerError):
        ledger_mod.Ledger.from_dict(d)


@pytest.mark.parametrize(
    "entry",
    [
        {"mount_point": "data"},
        {"mount_point": "/da\0ta"},
        {"dev": "8:1x"},
        {"dev": 81},
        {"mount_id": -1},
        {"mount_id": 1.5},
        {"fstype": "xfs;rm"},
        {"extra": 1},
    ],
)
def test_every_bad_filesystem_entry_refuses_the_ledger(entry):
    """A filesystem entry with a relative mount point, a bad device, mount ID or type is refused."""
    d = _valid()
    d["filesystems"] = [{**d["filesystems"][0], **entry}]
    with pytest.raises(LedgerError):
        ledger_mod.Ledger.from_dict(d)


def test_a_run_dir_under_tmp_is_refused(tmp_path):
    """A run directory below the world-writable /tmp is refused by name, and nothing is made in it."""
    with pytest.raises(UnsafeRunDirError, match=r"/tmp.*writable by"):
        RunDir.open(str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a directory chain only root can write (/run)")
def test_a_shared_sticky_run_dir_is_never_to_be_locked_down(request):
    """--run-dir /tmp: the fix names a directory of quiesce's own, never chmod of the shared one."""
    tmp_path = Path(tempfile.mkdtemp(dir="/run", prefix="quiesce-trust-test-"))
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(UnsafeRunDirError) as err:
        RunDir.open(str(shared))
    assert "is shared: do not change it" in str(err.value) and "chmod" not in str(err.value)
    private = tmp_path / "private"
    private.mkdir()
    private.chmod(0o777)
    with pytest.raises(UnsafeRunDirError, match=r"chmod 700"):  # not sticky: it may be fixed in place
        RunDir.open(str(private))


def test_escape_path_is_mountinfo_escaping():
    """Space, tab, newline, backslash (and other controls) become \\ooo; mountinfo parsing reverses it."""
    odd = "/srv/m\n/srv/lo2 x\\y\tz\r"
    escaped = escape_path(odd)
    assert "\n" not in escaped and " " not in escaped and "\t" not in escaped and "\r" not in escaped
    assert escaped == "/srv/m\\012/srv/lo2\\040x\\134y\\011z\\015"
    (mount,) = parse_mountinfo(f"30 1 8:1 / {escaped} rw - xfs /dev/sda1 rw\n")
    assert mount.mount_point == odd
    assert escape_path("/var/lib/mysql") == "/var/lib/mysql"


def test_plain_log_values_with_control_characters_are_quoted():
    """A tab or carriage return in a plain log value cannot split or overwrite a line."""
    result = RunResult(run_id="r", warnings=["a\tb", "c\rd"])
    lines = log_lines(result, "plain")
    assert 'message="a\\tb"' in lines[0] and 'message="c\\rd"' in lines[1]


def test_a_delegated_cgroup_is_recognised_by_its_xattr(tmp_path):
    """Ours and marked trusted.delegate=1: delegated; user.delegate, another owner, the top: not."""
    if os.geteuid() != 0:
        pytest.skip("trusted.* xattrs need root")
    for name in ("svc", "user-marked", "theirs", "other"):
        (tmp_path / name).mkdir()
    os.setxattr(tmp_path / "svc", "trusted.delegate", b"1")
    os.setxattr(tmp_path / "user-marked", "user.delegate", b"1")  # anyone who owns it can set this
    os.setxattr(tmp_path / "theirs", "trusted.delegate", b"1")
    os.chown(tmp_path / "theirs", 65534, 65534)
    assert delegated_cgroup(str(tmp_path), "/svc") == str(tmp_path / "svc")
    for name in ("user-marked", "theirs", "other"):
        assert delegated_cgroup(str(tmp_path), f"/{name}") is None, name
    assert delegated_cgroup(str(tmp_path), "/") is None


HOLDER = """
import sys, time
from quiesce.engine.proof import Proof
p = Proof()
print(p.token, p.fd, flush=True)
time.sleep(60)
"""


def test_only_the_holder_of_the_proof_is_proven():
    """open_proven: a pidfd for the process holding the proof; None for a wrong token, start or process."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen(["sleep", "60"])
    try:
        token, fd = child.stdout.readline().split()
        started = start_time(child.pid)
        pidfd = open_proven(child.pid, started, token, int(fd))
        assert pidfd is not None
        os.close(pidfd)
        assert open_proven(child.pid, started, "00" * 16, int(fd)) is None
        assert open_proven(child.pid, started + 1, token, int(fd)) is None
        assert open_proven(other.pid, start_time(other.pid), token, int(fd)) is None
    finally:
        for p in (child, other):
            p.kill()
            p.wait()
        child.stdout.close()
    assert open_proven(child.pid, started, token, int(fd)) is None


def test_the_proof_carries_the_windows_deadline_where_the_native_code_writes_it():
    """proof_deadline_ns reads the int64 written at QZ_PROOF_DEADLINE_AT; nothing there is None."""
    assert PROOF_DEADLINE_AT == lib.QZ_PROOF_DEADLINE_AT
    proof = Proof()
    try:
        assert proof_deadline_ns(os.getpid(), proof.fd) is None  # freezing has not begun
        proof.mark(PROOF_FROZEN)
        assert proof_deadline_ns(os.getpid(), proof.fd) is None
        deadline = time.monotonic_ns() + 30 * 10**9
        os.pwrite(proof.fd, deadline.to_bytes(8, sys.byteorder, signed=True), PROOF_DEADLINE_AT)
        assert proof_deadline_ns(os.getpid(), proof.fd) == deadline
        proof.mark(PROOF_THAWED)  # the holder's state does not touch it
        assert proof_deadline_ns(os.getpid(), proof.fd) == deadline
    finally:
        proof.close()


def test_notify_sender_checks():
    """A sender counts only in the hook's session (fallback) or cgroup; elsewhere it is refused."""
    assert in_session(os.getsid(0))(os.getpid())
    apart = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert not in_session(os.getsid(0))(apart.pid)
    finally:
        apart.kill()
        apart.wait()
    mine = cgroup_of(os.getpid())
    assert mine is not None
    assert in_cgroup(mine)(os.getpid())
    assert not in_cgroup(mine.rstrip("/") + "/quiesce-elsewhere")(os.getpid())
    assert not in_cgroup("/")(0)


def test_atomic_writes_never_follow_links_and_reads_refuse_other_files(root_run_dir, tmp_path):
    """A write replaces a link (its target untouched); a hard-linked or open-mode file is not trusted."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    with RunDir.open(root_run_dir) as d:
        os.symlink(victim, os.path.join(root_run_dir, "x"))
        atomic_write(d.fd, "x", b"new")
        assert victim.read_text() == "keep" and not os.path.islink(os.path.join(root_run_dir, "x"))
        assert d.read_trusted("x") == b"new"
        os.link(os.path.join(root_run_dir, "x"), os.path.join(root_run_dir, "y"))
        with pytest.raises(UntrustedFileError, match="2 links"):
            d.read_trusted("x")
        os.unlink(os.path.join(root_run_dir, "y"))
        os.chmod(os.path.join(root_run_dir, "x"), 0o644)
        with pytest.raises(UntrustedFileError, match="group or other"):
            d.read_trusted("x")
        assert [n for n in os.listdir(root_run_dir) if n.endswith(".tmp")] == []
