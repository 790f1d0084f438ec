"""`quiesce check --json` (and `run --json`) on hostile and odd Azure configs, through the command line.

Each config is a real root-owned file (mode 600) in a root-only directory,
so only its content is judged. Every case must give one valid JSON
document, exit 10, and Azure's documented error name and code naming what
is wrong; never a traceback. Nothing here runs a script or freezes: the
configs are invalid, or `quiesce check` only looks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quiesce.cli.exits import Exit

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(120)]

SCRIPT = b"#!/bin/sh\nexit 0\n"


@pytest.fixture
def place() -> Iterator[Path]:
    """A root-only directory under /run with a pre.sh, a post.sh, a directory and a mode-600 script."""
    if os.geteuid() != 0:
        pytest.skip("the config and scripts must be root's: needs root")
    d = Path(tempfile.mkdtemp(prefix="quiesce-test-oddcfg-", dir="/run"))
    for name, mode in (("pre.sh", 0o700), ("post.sh", 0o700), ("noexec.sh", 0o600)):
        (d / name).write_bytes(SCRIPT)
        os.chmod(d / name, mode)
    (d / "dir").mkdir(mode=0o700)
    (d / "run").mkdir(mode=0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def write_config(place: Path, content: bytes) -> Path:
    """The config file with exactly ``content``, owner root, mode 600."""
    path = place / "VMSnapshotScriptPluginConfig.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    return path


def quiesce(place: Path, command: str, content: bytes) -> tuple[int, dict[str, Any], str]:
    """Run ``quiesce COMMAND --json`` on a config holding ``content``: exit, the JSON document, stderr."""
    config = write_config(place, content)
    argv = [sys.executable, "-m", "quiesce", command, "--json", "--config", str(config), "--no-pluginhost"]
    argv += ["--no-vmbackup-conf", "--run-dir", str(place / "run")]
    r = subprocess.run(argv, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")
    lines = r.stdout.decode("utf-8").splitlines()
    assert len(lines) == 1, r.stdout
    return r.returncode, json.loads(lines[0]), r.stderr.decode(errors="replace")


def document(place: Path, **changes: Any) -> dict[str, Any]:
    """A valid config for ``place`` (no freeze), updated with ``changes``."""
    data: dict[str, Any] = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": str(place / "pre.sh"),
        "postScriptLocation": str(place / "post.sh"),
        "fsFreezeEnabled": False,
    }
    data.update(changes)
    return data


def encoded(data: dict[str, Any]) -> bytes:
    """The JSON text of ``data`` as UTF-8 bytes."""
    return json.dumps(data).encode()


def raw(place: Path, tail: str) -> bytes:
    """The valid config's text with ``tail`` (JSON text, written as is) added before the closing brace."""
    return encoded(document(place))[:-1] + tail.encode("utf-8", "surrogatepass") + b"}"


# Each case: the config's bytes (from the place), and words the one failed finding's message holds.
CONFIG_ERRORS: list[tuple[str, Any, list[str]]] = [
    ("empty-file", lambda p: b"", ["empty"]),
    ("blank-file", lambda p: b" \n\t\n", ["empty"]),
    ("top-level-array", lambda p: b"[]", ["top level is []", "a JSON object"]),
    ("top-level-string", lambda p: b'"ScriptRunner"', ["top level", "a JSON object"]),
    ("trailing-comma", lambda p: encoded(document(p))[:-1] + b",}", ["invalid JSON at line 1"]),
    ("not-utf8", lambda p: encoded(document(p, appName="x"))[:-3] + b'\xff"}', ["not UTF-8", "0xff"]),
    ("utf16", lambda p: json.dumps(document(p)).encode("utf-16"), ["not UTF-8"]),
    ("nan", lambda p: raw(p, ', "timeoutInSeconds": NaN'), ["timeoutInSeconds = NaN", "finite"]),
    ("infinity", lambda p: raw(p, ', "timeoutInSeconds": Infinity'), ["timeoutInSeconds = Infinity"]),
    ("-infinity", lambda p: raw(p, ', "preScriptNoOfRetries": -Infinity'), ["preScriptNoOfRetries"]),
    ("1e309", lambda p: raw(p, ', "timeoutInSeconds": 1e309'), ["timeoutInSeconds = 1e309"]),
    ("10**30", lambda p: raw(p, ', "timeoutInSeconds": 1' + "0" * 30), ["timeoutInSeconds = 1000"]),
    ("many-digits", lambda p: raw(p, ', "timeoutInSeconds": ' + "9" * 5000), ["invalid JSON"]),
    (
        "duplicate-key",
        lambda p: raw(p, ', "timeoutInSeconds": 30, "timeoutInSeconds": 60'),
        ["duplicate key"],
    ),
    ("timeout-string", lambda p: encoded(document(p, timeoutInSeconds="30")), ['timeoutInSeconds = "30"']),
    ("timeout-fraction", lambda p: encoded(document(p, timeoutInSeconds=30.5)), ["timeoutInSeconds = 30.5"]),
    ("timeout-zero", lambda p: encoded(document(p, timeoutInSeconds=0)), ["timeoutInSeconds = 0"]),
    ("timeout-negative", lambda p: encoded(document(p, timeoutInSeconds=-5)), ["timeoutInSeconds = -5"]),
    ("timeout-null", lambda p: encoded(document(p, timeoutInSeconds=None)), ["timeoutInSeconds = null"]),
    ("timeout-over", lambda p: encoded(document(p, timeoutInSeconds=1801)), ["timeoutInSeconds = 1801"]),
    (
        "retries-bool",
        lambda p: encoded(document(p, preScriptNoOfRetries=True)),
        ["preScriptNoOfRetries = true"],
    ),
    ("retries-negative", lambda p: encoded(document(p, postScriptNoOfRetries=-1)), ["postScriptNoOfRetries"]),
    ("poll-string", lambda p: encoded(document(p, ScriptsExecutionPollTimeSeconds="3")), ["PollTimeSeconds"]),
    ("continue-string", lambda p: encoded(document(p, continueBackupOnFailure="false")), ["continueBackup"]),
    (
        "continue-int",
        lambda p: encoded(document(p, continueBackupOnFailure=0)),
        ["continueBackupOnFailure = 0"],
    ),
    ("continue-True", lambda p: encoded(document(p, continueBackupOnFailure="True")), ["continueBackup"]),
    ("freeze-int", lambda p: encoded(document(p, fsFreezeEnabled=1)), ["fsFreezeEnabled = 1"]),
    (
        "pre-missing",
        lambda p: encoded({k: v for k, v in document(p).items() if k != "preScriptLocation"}),
        ["preScriptLocation is missing"],
    ),
    (
        "pre-wrong-case",
        lambda p: encoded(
            {("PreScriptLocation" if k == "preScriptLocation" else k): v for k, v in document(p).items()}
        ),
        ["preScriptLocation is missing"],
    ),
    ("pre-empty", lambda p: encoded(document(p, preScriptLocation="")), ['preScriptLocation = ""']),
    (
        "pre-relative",
        lambda p: encoded(document(p, preScriptLocation="pre.sh")),
        ['preScriptLocation = "pre.sh"'],
    ),
    ("pre-null", lambda p: encoded(document(p, preScriptLocation=None)), ["preScriptLocation = null"]),
    (
        "pre-list",
        lambda p: encoded(document(p, preScriptLocation=[str(p / "pre.sh")])),
        ["preScriptLocation = ["],
    ),
    ("pre-nul", lambda p: encoded(document(p, preScriptLocation="/a\x00b")), ["preScriptLocation", "NUL"]),
    ("dup-script", lambda p: raw(p, ', "postScriptLocation": "/x"'), ["duplicate key postScriptLocation"]),
    ("post-nul", lambda p: encoded(document(p, postScriptLocation="/a\x00b")), ["postScriptLocation", "NUL"]),
    ("params-string", lambda p: encoded(document(p, preScriptParams="a b")), ['preScriptParams = "a b"']),
    ("params-number", lambda p: encoded(document(p, preScriptParams=[1])), ["preScriptParams[0] = 1"]),
    ("params-null", lambda p: encoded(document(p, postScriptParams=[None])), ["postScriptParams[0] = null"]),
    (
        "params-too-long",
        lambda p: encoded(document(p, preScriptParams=["x" * 131072])),
        ["preScriptParams[0]"],
    ),
    (
        "params-too-many",
        lambda p: encoded(document(p, postScriptParams=[""] * 120_000)),
        ["postScriptParams ="],
    ),
    ("surrogate", lambda p: raw(p, ', "appName": "\\ud800"'), ["appName", "surrogate"]),
    (
        "freeze-timeout-tiny",
        lambda p: encoded(document(p, quiesce={"freezeTimeoutSeconds": 1e-10})),
        ["quiesce.freezeTimeoutSeconds = 1e-10"],
    ),
]


@pytest.mark.parametrize(
    ("content", "words"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS]
)
def test_check_names_what_is_wrong_in_the_config(place, content, words):
    """Each hostile config: exit 10, one JSON object, IncorrectJSONConfigFile (305) naming the key."""
    code, doc, _ = quiesce(place, "check", content(place))
    assert code == Exit.CONFIG and doc["exit"] == 10 and doc["ok"] is False
    assert (doc["error_name"], doc["error_code"]) == ("IncorrectJSONConfigFile", 305)
    [finding] = doc["findings"]
    assert finding["what"] == "config" and finding["error_code"] == 305
    for word in words:
        assert word in finding["message"], finding["message"]


RUN_CASES = [c for c in CONFIG_ERRORS if c[0] in ("not-utf8", "nan", "timeout-fraction", "params-too-long")]


@pytest.mark.parametrize(("content", "words"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_refuses_the_config_before_anything_runs(place, content, words):
    """`quiesce run --json` on such a config: exit 10 with the same name and key, nothing run."""
    code, doc, _ = quiesce(place, "run", content(place))
    assert code == Exit.CONFIG and doc["exit"] == 10
    assert (doc["error_name"], doc["error_code"]) == ("IncorrectJSONConfigFile", 305)
    for word in words:
        assert word in doc["error"], doc


@pytest.mark.parametrize(
    ("changes", "key", "value"),
    [
        ({"timeoutInSeconds": 30.0}, "timeout_s", 30),
        ({"timeoutInSeconds": 1e2}, "timeout_s", 100),
        ({"preScriptNoOfRetries": 1e0}, None, None),
        ({"newAzureKey": {"x": [1, 2]}}, None, None),
    ],
    ids=["30.0", "1e2", "1e0", "unknown-key"],
)
def test_check_accepts_what_azure_reads_the_same(place, changes, key, value):
    """Whole numbers written as floats and unknown keys are fine: exit 0 (an unknown key is a warning)."""
    code, doc, _ = quiesce(place, "check", encoded(document(place, **changes)))
    assert code == Exit.OK and doc["ok"] is True, doc
    if key is not None:
        assert doc[key] == value
    if "newAzureKey" in changes:
        assert any("newAzureKey" in w for w in doc["warnings"])


def test_utf8_bom_is_read_as_the_same_config(place):
    """A UTF-8 byte order mark (as some editors save) changes nothing."""
    code, doc, _ = quiesce(place, "check", b"\xef\xbb\xbf" + encoded(document(place, timeoutInSeconds=42)))
    assert code == Exit.OK and doc["timeout_s"] == 42, doc


@pytest.mark.parametrize(
    ("script", "name", "code", "words"),
    [
        ("missing.sh", "Pre-ScriptNotFound", 302, ["does not exist"]),
        ("dir", "Pre-ScriptNotFound", 302, ["is a directory, not a regular file"]),
        ("dir/", "Pre-ScriptNotFound", 302, ["is a directory"]),
        ("pre.sh/", "Pre-ScriptNotFound", 302, ["ENOTDIR"]),
        ("pre.sh/.", "Pre-ScriptNotFound", 302, ["ENOTDIR"]),
        ("a" * 300, "Pre-ScriptNotFound", 302, ["ENAMETOOLONG"]),
        ("with space.sh", "Pre-ScriptNotFound", 302, ["with space.sh does not exist"]),
        ("new\nline.sh", "Pre-ScriptNotFound", 302, ["new\nline.sh does not exist"]),
        ("noexec.sh", "InsufficientPermissionforPre-Script", 306, ["not executable by its owner"]),
    ],
    ids=[
        "missing",
        "directory",
        "directory-slash",
        "file-slash",
        "file-slash-dot",
        "long",
        "space",
        "newline",
        "not-executable",
    ],
)
def test_check_names_what_is_wrong_with_the_script_path(place, script, name, code, words):
    """Odd script paths: Azure's name for the pre-script's problem, in valid JSON, exit 10."""
    content = encoded(document(place, preScriptLocation=f"{place}/{script}"))
    exit_code, doc, _ = quiesce(place, "check", content)
    assert exit_code == Exit.CONFIG and doc["ok"] is False
    assert (doc["error_name"], doc["error_code"]) == (name, code)
    pre = next(f for f in doc["findings"] if f["what"] == "pre-script")
    assert (pre["error_name"], pre["error_code"], pre["path"]) == (name, code, f"{place}/{script}")
    for word in words:
        assert word in pre["message"], pre["message"]


def test_a_script_named_with_space_and_newline_passes_and_the_text_output_stays_one_line(place):
    """Spaces and newlines are legal in a name: checked as any script; the text report escapes them."""
    name = "odd name\nx.sh"
    (place / name).write_bytes(SCRIPT)
    os.chmod(place / name, 0o700)
    content = encoded(document(place, preScriptLocation=f"{place}/{name}"))
    code, doc, _ = quiesce(place, "check", content)
    assert code == Exit.OK and doc["ok"] is True, doc
    config = write_config(place, content)
    argv = [sys.executable, "-m", "quiesce", "check", "--config", str(config), "--no-pluginhost"]
    r = subprocess.run([*argv, "--no-vmbackup-conf"], capture_output=True, text=True, timeout=60)
    assert r.returncode == Exit.OK
    [line] = [line for line in r.stdout.splitlines() if line.startswith("pre-script ")]
    assert f"pre-script {place}/odd name\\nx.sh: ok" in line
