"""Named targets on real mounts: typos, directories inside a mount and planted links are errors.

No test here may freeze ``/``: a link that leads to ``/`` is only ever shown
to ``quiesce mounts``, which plans and never freezes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quiesce.cli.exits import Exit
from tests.privileged.conftest import is_frozen

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def quiesce(run_dir, *args):
    """Run ``python -m quiesce`` with a private run directory."""
    env = dict(os.environ, QUIESCE_RUN_DIR=run_dir)
    return subprocess.run(
        [sys.executable, "-m", "quiesce", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_config_target_with_a_typo_is_a_config_error_and_nothing_runs(setup, fs):
    """One typo among the config's targets: exit 10 naming it; no script ran, nothing was frozen."""
    typo = str(fs["ext4"].mount_point) + "-typo"
    setup.config(quiesce={"targets": [str(fs["xfs"].mount_point), typo]})
    r = setup.cli("--json")
    assert r.returncode == Exit.CONFIG, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["error_name"] == "IncorrectJSONConfigFile" and out["error_code"] == 305
    assert f"quiesce.targets: cannot freeze: {typo}: no such file or directory" in out["error"]
    assert setup.events() == []
    assert not is_frozen(fs["xfs"])


def test_config_target_inside_a_mount_names_the_mount(setup, fs):
    """A directory on the ext4 (not its mount point) is refused, naming the ext4's mount point."""
    inside = fs["ext4"].mount_point / "db"
    inside.mkdir(exist_ok=True)
    setup.config(quiesce={"targets": [str(inside)]})
    r = setup.cli()
    assert r.returncode == Exit.CONFIG, r.stdout + r.stderr
    assert f"{inside}: not a mount point: it is on the filesystem mounted at {fs['ext4'].mount_point}" in (
        r.stderr
    )
    assert setup.events() == []


def test_a_link_planted_in_a_users_directory_redirects_nothing(setup, fs):
    """/base/u/app -> the xfs, planted by uid 65534: refused by run (10), freeze (7) and mounts (7)."""
    user_dir = os.path.join(setup.base, "u")
    os.mkdir(user_dir, 0o755)
    os.chown(user_dir, 65534, 65534)
    link = os.path.join(user_dir, "app")
    os.symlink(str(fs["xfs"].mount_point), link)
    setup.config(quiesce={"targets": [link]})
    r = setup.cli()
    assert r.returncode == Exit.CONFIG, r.stdout + r.stderr
    assert f"goes through the symlink {link}, in {user_dir}, which is owned by uid 65534" in r.stderr
    assert setup.events() == []
    for command in ("freeze", "mounts"):
        r = quiesce(setup.run_dir, command, "--no-vmbackup-conf", link)
        assert r.returncode == Exit.BAD_TARGET, r.stdout + r.stderr
        assert f"symlink {link}" in r.stderr
    assert not is_frozen(fs["xfs"])


def test_a_link_to_root_is_never_a_way_to_select_root(setup):
    """A link to / in a root-only directory: `mounts` refuses it (a plan only: nothing is frozen here)."""
    link = os.path.join(setup.base, "rootlink")
    os.symlink("/", link)
    r = quiesce(setup.run_dir, "mounts", "--json", "--no-vmbackup-conf", link)
    assert r.returncode == Exit.BAD_TARGET, r.stdout + r.stderr
    assert "resolves to / through the symlink" in json.loads(r.stdout)["error"]


def test_a_link_only_root_could_make_is_followed_and_the_real_mount_reported(setup, fs):
    """A link in a root-only directory to the ext4: the plan (and so the report) names the ext4 itself."""
    link = os.path.join(setup.base, "data")
    os.symlink(str(fs["ext4"].mount_point), link)
    r = quiesce(setup.run_dir, "mounts", "--json", "--no-vmbackup-conf", link)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert [t["mount_point"] for t in plan["targets"]] == [str(fs["ext4"].mount_point)]
    assert plan["named"] == [{"given": link, "path": str(fs["ext4"].mount_point)}]
