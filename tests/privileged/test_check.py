"""`quiesce check`: every problem a run would meet, found without running or freezing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from quiesce.cli.exits import Exit
from tests.privileged.conftest import is_frozen

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(90)]


def check(setup, *args):
    """``quiesce check --json`` on the setup's config."""
    argv = [sys.executable, "-m", "quiesce", "check", "--json", "--config", setup.config_path]
    argv += ["--no-pluginhost", "--no-vmbackup-conf", "--run-dir", setup.run_dir, *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return r.returncode, json.loads(r.stdout)


def by_what(doc):
    """Findings keyed by (what, path)."""
    return {(f["what"], f["path"]): f for f in doc["findings"]}


def test_a_good_setup_passes_and_shows_the_plan(setup, fs):
    """All fine: exit 0, the plan in order, and no script ran, nothing froze."""
    setup.hook("10-a", "exit 0\n")
    setup.config()
    code, doc = check(setup)
    assert code == Exit.OK, doc
    assert doc["ok"] is True and doc["exit"] == 0
    planned = [t["mount_point"] for t in doc["plan"]["targets"]]
    assert sorted(planned) == sorted(setup.targets)
    assert any(f["what"] == "hook" and f["ok"] for f in doc["findings"])
    assert setup.events() == []
    assert not is_frozen(fs["ext4"]) and not is_frozen(fs["xfs"])


def test_every_problem_is_found_in_one_check(setup, fs):
    """Missing pre-script, CRLF post-script, unsafe hook, dir in the hooks, target typo: all named."""
    setup.config(quiesce={"targets": [setup.targets[0], setup.targets[0] + "-typo"]})
    with open(setup.config_path) as f:
        cfg = json.load(f)
    cfg["preScriptLocation"] = os.path.join(setup.base, "no-such-pre.sh")
    with open(setup.config_path, "w") as f:
        json.dump(cfg, f)
    post = os.path.join(setup.base, "post.sh")
    with open(post, "wb") as f:
        f.write(b"#!/bin/sh\r\nexit 0\r\n")
    setup.hook("10-unsafe", "exit 0\n", mode=0o777)
    os.mkdir(os.path.join(setup.hooks, "20-dir"))
    code, doc = check(setup)
    assert code == Exit.CONFIG and doc["exit"] == 10 and doc["ok"] is False
    found = by_what(doc)
    pre = found[("pre-script", cfg["preScriptLocation"])]
    assert not pre["ok"] and pre["error_name"] == "Pre-ScriptNotFound" and pre["error_code"] == 302
    assert doc["error_name"] == "Pre-ScriptNotFound"
    assert "Windows line endings (CRLF)" in found[("post-script", post)]["message"]
    hook = found[("hook", os.path.join(setup.hooks, "10-unsafe"))]
    assert not hook["ok"] and "writable by" in hook["message"]
    assert any("20-dir" in w and "is a directory" in w for w in doc["warnings"])
    targets = found[("targets", None)]
    assert not targets["ok"] and "-typo: no such file or directory" in targets["message"]
    assert targets["error_code"] == 305
    assert setup.events() == []


def test_an_invalid_config_stops_the_check_with_its_error(setup):
    """Bad JSON types: the config's own finding (305), exit 10; a missing config: 316."""
    setup.config(fsFreezeEnabled="false")
    code, doc = check(setup)
    assert code == Exit.CONFIG
    assert [f["what"] for f in doc["findings"]] == ["config"]
    assert doc["error_code"] == 305 and "fsFreezeEnabled" in doc["findings"][0]["message"]
    os.unlink(setup.config_path)
    code, doc = check(setup)
    assert code == Exit.CONFIG and doc["error_code"] == 316


def test_text_output_says_what_is_wrong(setup):
    """Without --json: one line per finding, the plan, and a verdict."""
    setup.config(pre="exit 0\n")
    os.chmod(os.path.join(setup.base, "pre.sh"), 0o766)
    argv = [sys.executable, "-m", "quiesce", "check", "--config", setup.config_path, "--no-pluginhost"]
    r = subprocess.run([*argv, "--no-vmbackup-conf"], capture_output=True, text=True, timeout=60)
    assert r.returncode == Exit.CONFIG
    assert f"pre-script {setup.base}/pre.sh: PROBLEM:" in r.stdout
    assert "freeze order" in r.stdout and "1 problem found" in r.stdout
