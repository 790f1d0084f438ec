"""Tests of quiesce.azure: Azure's plugin config JSON, quiesce's extensions, the plugin host INI."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiesce.azure import config as cfg
from quiesce.azure.config import (
    AZURE_KEYS,
    EXTENSION_KEY,
    EXTENSION_KEYS,
    MAX_FREEZE_TIMEOUT_S,
    MAX_GRACE_S,
    MAX_POLL_S,
    MAX_RETRIES,
    MAX_RETRY_BACKOFF_S,
    MAX_TIMEOUT_S,
    MIN_FREEZE_TIMEOUT_S,
    MIN_POLL_S,
    MIN_TIMEOUT_S,
    SNAPSHOT_KEYS,
    Extensions,
    LoadedConfig,
    PluginConfig,
    SnapshotMode,
    SnapshotSpec,
)
from quiesce.azure.configparse import load_config, parse_config
from quiesce.azure.pluginhost import (
    DEFAULT_PLUGINHOST,
    MAX_PLUGINS,
    PluginEntry,
    PluginHostConfig,
    effective_timeout_s,
    load_pluginhost,
    parse_pluginhost,
)
from quiesce.azure.text import MAX_CONFIG_BYTES
from quiesce.engine.freeze import DEFAULT_FREEZE_TIMEOUT_S
from quiesce.errors import ConfigError, ConfigNotFoundError, IncorrectJSONConfigFile, IncorrectPluginhostFile

#: Fuzz examples per test are multiplied by this: 3 gives the 10,800 fuzzed and
#: mutated configs CI runs; QUIESCE_FUZZ_SCALE=30 is the long soak.
FUZZ_SCALE = int(os.environ.get("QUIESCE_FUZZ_SCALE", "3"))

DATA = Path(__file__).parent / "data" / "config"
SOURCE = "/etc/azure/VMSnapshotScriptPluginConfig.json"
INI_SOURCE = "/etc/azure/VMSnapshotPluginHost.conf"

# ---------------------------------------------------------------------------
# helpers


def published_sample() -> dict[str, Any]:
    """Azure's published sample config, as shipped (empty script paths)."""
    return json.loads((DATA / "VMSnapshotScriptPluginConfig.json").read_text())


def sample() -> dict[str, Any]:
    """The published sample with real script paths filled in."""
    data = published_sample()
    data["preScriptLocation"] = "/opt/db/pre.sh"
    data["postScriptLocation"] = "/opt/db/post.sh"
    return data


def full_sample() -> dict[str, Any]:
    """A valid config that sets every Azure key and every extension key."""
    data = sample()
    data["ScriptsExecutionPollTimeSeconds"] = 2
    data["appName"] = "postgres"
    data[EXTENSION_KEY] = {
        "targets": ["/data", "/var/lib/*"],
        "exclude": ["/data/scratch"],
        "excludeFstypes": ["vfat", "fuse.*"],
        "freezeTimeoutSeconds": 30,
        "graceSeconds": 2.5,
        "retryBackoffSeconds": 1,
        "hookDirectory": "/etc/quiesce/hooks.d",
        "snapshot": {
            "mode": "command",
            "argv": ["/usr/bin/cp", "--reflink=always", "a", "b"],
            "timeoutSeconds": 10,
        },
        "preflush": False,
        "expediteRcu": False,
        "parallelFreeze": False,
    }
    return data


def parse(data: Any) -> LoadedConfig:
    """Parse a Python value as the JSON config file, named as Azure's path."""
    return parse_config(json.dumps(data), source=SOURCE)


def with_value(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with the key at ``path`` (nested objects created) set to ``value``."""
    result = copy.deepcopy(data)
    node = result
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return result


def rejected(data: Any) -> str:
    """The message of the IncorrectJSONConfigFile that parsing ``data`` raises."""
    with pytest.raises(IncorrectJSONConfigFile) as info:
        parse(data)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: ")
    return message


def ini(*lines: str) -> str:
    """INI text from lines."""
    return "\n".join(lines) + "\n"


SHIPPED_INI = (DATA / "VMSnapshotPluginHost.conf").read_text()


def ini_rejected(text: str | bytes) -> str:
    """The message of the IncorrectPluginhostFile that parsing ``text`` raises."""
    with pytest.raises(IncorrectPluginhostFile) as info:
        parse_pluginhost(text, source=INI_SOURCE)
    message = str(info.value)
    assert message.startswith(f"{INI_SOURCE}: ")
    return message


# ---------------------------------------------------------------------------
# the published sample and defaults


def test_published_sample_with_paths_parses():
    """Azure's sample, with only the script paths filled in, parses to exactly its values."""
    loaded = parse_config((json.dumps(sample())).encode(), source=SOURCE)
    assert loaded.warnings == ()
    assert loaded.source == SOURCE
    assert loaded.config == PluginConfig(
        plugin_name="ScriptRunner",
        pre_script="/opt/db/pre.sh",
        post_script="/opt/db/post.sh",
        pre_params=("", ""),
        post_params=("", ""),
        pre_retries=0,
        post_retries=0,
        timeout_s=30,
        continue_on_failure=True,
        fs_freeze_enabled=True,
        poll_s=cfg.DEFAULT_POLL_S,
        quiesce=Extensions(),
    )


def test_published_sample_file_bytes_parse_after_filling_paths():
    """The sample file's own bytes (layout, spaces before colons) parse once paths are set."""
    raw = (DATA / "VMSnapshotScriptPluginConfig.json").read_bytes()
    filled = raw.replace(b'"preScriptLocation" : ""', b'"preScriptLocation" : "/pre"').replace(
        b'"postScriptLocation" : ""', b'"postScriptLocation" : "/post"'
    )
    assert parse_config(filled).config.pre_script == "/pre"


def test_published_sample_as_shipped_names_the_empty_script_path():
    """The sample as shipped (empty paths) is rejected, naming preScriptLocation and saying it is empty."""
    message = rejected(published_sample())
    assert "preScriptLocation" in message and "empty" in message


def test_empty_params_are_kept_like_azure():
    """Azure passes every params element, so ``["", ""]`` is two empty argv entries, not none."""
    config = parse(with_value(sample(), ("postScriptParams",), ["", "x", ""])).config
    assert config.pre_params == ("", "")
    assert config.post_params == ("", "x", "")


def test_minimal_config_gets_azure_defaults():
    """Only the two required keys: every other field takes Azure's code default."""
    config = parse({"preScriptLocation": "/a", "postScriptLocation": "/b"}).config
    assert config == PluginConfig(pre_script="/a", post_script="/b")
    assert config.plugin_name == "ScriptRunner"
    assert (config.pre_params, config.post_params) == ((), ())
    assert (config.pre_retries, config.post_retries) == (0, 0)
    assert config.timeout_s == cfg.DEFAULT_SCRIPT_TIMEOUT_S == 10
    assert config.continue_on_failure is True and config.fs_freeze_enabled is True
    assert config.poll_s == 3
    assert config.app_name is None


def test_extension_defaults():
    """An absent or empty ``quiesce`` object gives the documented defaults."""
    absent = parse(sample()).config.quiesce
    empty = parse(with_value(sample(), (EXTENSION_KEY,), {})).config.quiesce
    assert absent == empty == Extensions()
    assert absent.targets == absent.exclude == absent.exclude_fstypes == ()
    assert absent.freeze_timeout_s == 60.0
    assert absent.grace_s == 5.0
    assert absent.retry_backoff_s == 0.0
    assert absent.hook_directory is None
    assert absent.snapshot == SnapshotSpec(SnapshotMode.NONE)
    assert absent.preflush is True
    # The fast path is the default; the config opts out (test_full_config_parses_every_field).
    assert absent.expedite_rcu is True
    assert absent.parallel_freeze is True


def test_full_config_parses_every_field():
    """Every Azure key and every extension key lands in its typed field."""
    config = parse(full_sample()).config
    assert config.poll_s == 2 and config.app_name == "postgres"
    assert config.quiesce == Extensions(
        targets=("/data", "/var/lib/*"),
        exclude=("/data/scratch",),
        exclude_fstypes=("vfat", "fuse.*"),
        freeze_timeout_s=30.0,
        grace_s=2.5,
        retry_backoff_s=1.0,
        hook_directory="/etc/quiesce/hooks.d",
        snapshot=SnapshotSpec(
            SnapshotMode.COMMAND, ("/usr/bin/cp", "--reflink=always", "a", "b"), timeout_s=10.0
        ),
        preflush=False,
        expedite_rcu=False,
        parallel_freeze=False,
    )


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        ({"mode": "none"}, SnapshotSpec(SnapshotMode.NONE)),
        ({"mode": "hold"}, SnapshotSpec(SnapshotMode.HOLD)),
        (
            {"mode": "command", "argv": ["/bin/true"], "timeoutSeconds": 0.5},
            SnapshotSpec(SnapshotMode.COMMAND, ("/bin/true",), 0.5),
        ),
        (
            {"mode": "command", "argv": ["/bin/sh", "-c", "", "x"], "timeoutSeconds": 59.999},
            SnapshotSpec(SnapshotMode.COMMAND, ("/bin/sh", "-c", "", "x"), 59.999),
        ),
    ],
    ids=["none", "hold", "command", "command-empty-arg-and-near-limit"],
)
def test_snapshot_modes(snapshot, expected):
    """Each snapshot mode parses to its SnapshotSpec; empty argv entries after the first are kept."""
    assert (
        parse(with_value(sample(), (EXTENSION_KEY, "snapshot"), snapshot)).config.quiesce.snapshot == expected
    )


def test_hook_directory_null_means_none():
    """``hookDirectory: null`` is the same as leaving it out."""
    config = parse(with_value(sample(), (EXTENSION_KEY, "hookDirectory"), None)).config
    assert config.quiesce.hook_directory is None


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("timeoutInSeconds",), MIN_TIMEOUT_S),
        (("timeoutInSeconds",), MAX_TIMEOUT_S),
        (("preScriptNoOfRetries",), MAX_RETRIES),
        (("postScriptNoOfRetries",), 0),
        (("ScriptsExecutionPollTimeSeconds",), MIN_POLL_S),
        (("ScriptsExecutionPollTimeSeconds",), MAX_POLL_S),
        ((EXTENSION_KEY, "freezeTimeoutSeconds"), MAX_FREEZE_TIMEOUT_S),
        ((EXTENSION_KEY, "freezeTimeoutSeconds"), 0.001),
        ((EXTENSION_KEY, "graceSeconds"), 0),
        ((EXTENSION_KEY, "graceSeconds"), MAX_GRACE_S),
        ((EXTENSION_KEY, "retryBackoffSeconds"), MAX_RETRY_BACKOFF_S),
    ],
    ids=lambda v: ".".join(v) if isinstance(v, tuple) else repr(v),
)
def test_range_limits_are_inclusive(path, value):
    """The documented limits themselves are accepted."""
    parse(with_value(sample(), path, value))


def test_number_keys_accept_integers_as_floats():
    """Second counts of the extension accept JSON integers and store floats."""
    config = parse(with_value(sample(), (EXTENSION_KEY, "graceSeconds"), 7)).config
    assert config.quiesce.grace_s == 7.0 and isinstance(config.quiesce.grace_s, float)


# ---------------------------------------------------------------------------
# every key's type and range errors

Q = EXTENSION_KEY
CMD = {"mode": "command", "argv": ["/bin/true"], "timeoutSeconds": 5}

BAD_VALUES = [
    # Azure's keys
    (("pluginName",), 5, ["pluginName = 5", "a string"]),
    (("pluginName",), None, ["pluginName = null", "a string"]),
    (("preScriptLocation",), "", ['preScriptLocation = ""', "absolute path", "pre-script", "empty"]),
    (("preScriptLocation",), "pre.sh", ['preScriptLocation = "pre.sh"', "absolute path", "starting with /"]),
    (("preScriptLocation",), None, ["preScriptLocation = null", "absolute path"]),
    (("preScriptLocation",), ["/a"], ['preScriptLocation = ["/a"]', "absolute path"]),
    (("preScriptLocation",), "/a\x00b", ["preScriptLocation", "NUL"]),
    (("preScriptLocation",), "/a\ud800", ["preScriptLocation", "surrogate"]),
    (("postScriptLocation",), "", ["postScriptLocation", "post-script", "empty"]),
    (("postScriptLocation",), 7, ["postScriptLocation = 7", "absolute path"]),
    (("preScriptParams",), "a b", ['preScriptParams = "a b"', "a list of strings"]),
    (("preScriptParams",), None, ["preScriptParams = null", "a list of strings"]),
    (("preScriptParams",), {"a": "b"}, ["preScriptParams", "a list of strings"]),
    (("preScriptParams",), ["ok", 1], ["preScriptParams[1] = 1", "a string"]),
    (("postScriptParams",), [None], ["postScriptParams[0] = null", "a string"]),
    (("postScriptParams",), [True], ["postScriptParams[0] = true", "a string"]),
    (("postScriptParams",), ["a\x00"], ["postScriptParams[0]", "NUL"]),
    (("preScriptNoOfRetries",), -1, ["preScriptNoOfRetries = -1", f"an integer from 0 to {MAX_RETRIES}"]),
    (("preScriptNoOfRetries",), MAX_RETRIES + 1, ["preScriptNoOfRetries", "an integer from 0"]),
    (("preScriptNoOfRetries",), True, ["preScriptNoOfRetries = true", "an integer"]),
    (("preScriptNoOfRetries",), 1.5, ["preScriptNoOfRetries = 1.5", "an integer", "not a fraction"]),
    (("postScriptNoOfRetries",), "1", ['postScriptNoOfRetries = "1"', "an integer"]),
    (("postScriptNoOfRetries",), None, ["postScriptNoOfRetries = null", "an integer"]),
    (("timeoutInSeconds",), 3600, ["timeoutInSeconds = 3600: expected an integer from 1 to 1800"]),
    (("timeoutInSeconds",), 0, ["timeoutInSeconds = 0", "an integer from 1 to 1800"]),
    (("timeoutInSeconds",), MAX_TIMEOUT_S + 1, ["timeoutInSeconds", "an integer from"]),
    (("timeoutInSeconds",), 30.5, ["timeoutInSeconds = 30.5", "an integer", "not a fraction"]),
    (("timeoutInSeconds",), 3600.0, ["timeoutInSeconds = 3600.0", "an integer from 1 to 1800"]),
    (("timeoutInSeconds",), False, ["timeoutInSeconds = false", "an integer"]),
    (("timeoutInSeconds",), "30", ['timeoutInSeconds = "30"', "an integer"]),
    (("timeoutInSeconds",), -30, ["timeoutInSeconds = -30", "an integer"]),
    (("continueBackupOnFailure",), "false", ['continueBackupOnFailure = "false"', "boolean", "not a string"]),
    (("continueBackupOnFailure",), "true", ["continueBackupOnFailure", "true or false"]),
    (("continueBackupOnFailure",), 0, ["continueBackupOnFailure = 0", "true or false"]),
    (("continueBackupOnFailure",), None, ["continueBackupOnFailure = null", "boolean"]),
    (("fsFreezeEnabled",), "false", ['fsFreezeEnabled = "false"', "boolean"]),
    (("fsFreezeEnabled",), 1, ["fsFreezeEnabled = 1", "boolean"]),
    (("ScriptsExecutionPollTimeSeconds",), 0, ["ScriptsExecutionPollTimeSeconds = 0", "from 1 to 5"]),
    (
        ("ScriptsExecutionPollTimeSeconds",),
        MAX_POLL_S + 1,
        ["ScriptsExecutionPollTimeSeconds", "from 1 to 5"],
    ),
    (("ScriptsExecutionPollTimeSeconds",), 2.5, ["ScriptsExecutionPollTimeSeconds = 2.5", "not a fraction"]),
    (("ScriptsExecutionPollTimeSeconds",), True, ["ScriptsExecutionPollTimeSeconds = true", "an integer"]),
    (("appName",), 5, ["appName = 5", "a string"]),
    # the extension object
    ((Q,), None, ["quiesce = null", "a JSON object"]),
    ((Q,), [], ["quiesce = []", "a JSON object"]),
    ((Q,), "none", ['quiesce = "none"', "a JSON object"]),
    ((Q, "bogus"), 1, ["quiesce.bogus = 1", "unknown keys are errors"]),
    ((Q, "Targets"), ["/a"], ["quiesce.Targets", "did you mean targets"]),
    ((Q, "targets"), "/data", ['quiesce.targets = "/data"', "a list of absolute mount points"]),
    ((Q, "targets"), None, ["quiesce.targets = null", "a list"]),
    ((Q, "targets"), ["data"], ['quiesce.targets[0] = "data"', "absolute", "starting with /"]),
    ((Q, "targets"), ["/a", ""], ['quiesce.targets[1] = ""', "empty"]),
    ((Q, "targets"), [5], ["quiesce.targets[0] = 5", "absolute path"]),
    ((Q, "exclude"), ["/a", "rel/*"], ["quiesce.exclude[1]", "absolute"]),
    ((Q, "exclude"), {"/a": 1}, ["quiesce.exclude", "a list"]),
    ((Q, "excludeFstypes"), "tmpfs", ['quiesce.excludeFstypes = "tmpfs"', "a list of filesystem types"]),
    ((Q, "excludeFstypes"), [""], ['quiesce.excludeFstypes[0] = ""', "not blank"]),
    ((Q, "excludeFstypes"), [" "], ["quiesce.excludeFstypes[0]", "not blank"]),
    ((Q, "excludeFstypes"), [1], ["quiesce.excludeFstypes[0] = 1", "filesystem type"]),
    ((Q, "freezeTimeoutSeconds"), 0, ["quiesce.freezeTimeoutSeconds = 0", "from 0.001 to 3600"]),
    ((Q, "freezeTimeoutSeconds"), -1, ["quiesce.freezeTimeoutSeconds = -1", "from 0.001"]),
    ((Q, "freezeTimeoutSeconds"), 5e-324, ["quiesce.freezeTimeoutSeconds = 5e-324", "from 0.001"]),
    (
        (Q, "freezeTimeoutSeconds"),
        MAX_FREEZE_TIMEOUT_S + 0.5,
        ["quiesce.freezeTimeoutSeconds", "to 3600"],
    ),
    ((Q, "freezeTimeoutSeconds"), True, ["quiesce.freezeTimeoutSeconds = true", "a number of seconds"]),
    ((Q, "freezeTimeoutSeconds"), "60", ['quiesce.freezeTimeoutSeconds = "60"', "a number"]),
    ((Q, "freezeTimeoutSeconds"), None, ["quiesce.freezeTimeoutSeconds = null", "a number"]),
    ((Q, "freezeTimeoutSeconds"), 10**400, ["quiesce.freezeTimeoutSeconds = 1000", "to 3600"]),
    ((Q, "graceSeconds"), -0.1, ["quiesce.graceSeconds = -0.1", "from 0 to 60"]),
    ((Q, "graceSeconds"), MAX_GRACE_S + 1, ["quiesce.graceSeconds", "from 0 to"]),
    ((Q, "graceSeconds"), False, ["quiesce.graceSeconds = false", "a number"]),
    ((Q, "retryBackoffSeconds"), -1, ["quiesce.retryBackoffSeconds = -1", "from 0 to 300"]),
    ((Q, "retryBackoffSeconds"), MAX_RETRY_BACKOFF_S + 1, ["quiesce.retryBackoffSeconds", "300"]),
    ((Q, "retryBackoffSeconds"), [1], ["quiesce.retryBackoffSeconds = [1]", "a number"]),
    ((Q, "hookDirectory"), "", ['quiesce.hookDirectory = ""', "hook directory", "empty"]),
    ((Q, "hookDirectory"), "hooks.d", ["quiesce.hookDirectory", "absolute"]),
    ((Q, "hookDirectory"), 5, ["quiesce.hookDirectory = 5", "absolute path"]),
    ((Q, "hookDirectory"), False, ["quiesce.hookDirectory = false", "absolute path"]),
    ((Q, "preflush"), "false", ['quiesce.preflush = "false"', "boolean", "not a string"]),
    ((Q, "preflush"), None, ["quiesce.preflush = null", "boolean"]),
    ((Q, "expediteRcu"), "true", ['quiesce.expediteRcu = "true"', "boolean"]),
    ((Q, "snapshot"), None, ["quiesce.snapshot = null", "a JSON object"]),
    ((Q, "snapshot"), "none", ['quiesce.snapshot = "none"', "a JSON object"]),
    ((Q, "snapshot"), {}, ["quiesce.snapshot.mode is missing", '"none", "command", "hold"']),
    ((Q, "snapshot"), {"mode": "fast"}, ['quiesce.snapshot.mode = "fast"', "one of"]),
    ((Q, "snapshot"), {"mode": None}, ["quiesce.snapshot.mode = null", "one of"]),
    ((Q, "snapshot"), {"mode": "NONE"}, ['quiesce.snapshot.mode = "NONE"', "one of"]),
    ((Q, "snapshot"), {"mode": "none", "argv": ["/x"]}, ["quiesce.snapshot.argv", 'mode "none"']),
    (
        (Q, "snapshot"),
        {"mode": "hold", "timeoutSeconds": 1},
        ["quiesce.snapshot.timeoutSeconds", 'mode "hold"'],
    ),
    ((Q, "snapshot"), {"mode": "hold", "extra": 1}, ["quiesce.snapshot.extra = 1", "unknown keys"]),
    ((Q, "snapshot"), {"mode": "command"}, ["quiesce.snapshot.argv is missing", 'mode "command"']),
    (
        (Q, "snapshot"),
        {"mode": "command", "argv": ["/bin/true"]},
        ["quiesce.snapshot.timeoutSeconds is missing", "required"],
    ),
    ((Q, "snapshot"), {**CMD, "argv": []}, ["quiesce.snapshot.argv = []", "non-empty"]),
    ((Q, "snapshot"), {**CMD, "argv": "/bin/true"}, ['quiesce.snapshot.argv = "/bin/true"', "list"]),
    ((Q, "snapshot"), {**CMD, "argv": ["cp", "a"]}, ['quiesce.snapshot.argv[0] = "cp"', "absolute"]),
    ((Q, "snapshot"), {**CMD, "argv": [""]}, ["quiesce.snapshot.argv[0]", "empty"]),
    ((Q, "snapshot"), {**CMD, "argv": ["/bin/cp", "a", 2]}, ["quiesce.snapshot.argv[2] = 2", "a string"]),
    ((Q, "snapshot"), {**CMD, "argv": ["/bin/cp", "a\x00"]}, ["quiesce.snapshot.argv[1]", "NUL"]),
    (
        (Q, "snapshot"),
        {**CMD, "timeoutSeconds": 0},
        ["quiesce.snapshot.timeoutSeconds = 0", "from 0.001"],
    ),
    (
        (Q, "snapshot"),
        {**CMD, "timeoutSeconds": -2},
        ["quiesce.snapshot.timeoutSeconds = -2", "from 0.001"],
    ),
    (
        (Q, "snapshot"),
        {**CMD, "timeoutSeconds": 1e-10},
        ["quiesce.snapshot.timeoutSeconds = 1e-10", "from 0.001"],
    ),
    (
        (Q, "snapshot"),
        {**CMD, "timeoutSeconds": 60},
        ["quiesce.snapshot.timeoutSeconds = 60", "less than quiesce.freezeTimeoutSeconds (60)"],
    ),
    (
        (Q, "snapshot"),
        {**CMD, "timeoutSeconds": True},
        ["quiesce.snapshot.timeoutSeconds = true", "a number"],
    ),
    ((Q, "snapshot"), {**CMD, "timeoutSeconds": "5"}, ['quiesce.snapshot.timeoutSeconds = "5"', "a number"]),
]


@pytest.mark.parametrize(
    ("path", "value", "words"),
    BAD_VALUES,
    ids=[f"{'.'.join(path)}={json.dumps(value)[:30]}" for path, value, _ in BAD_VALUES],
)
def test_bad_value_is_rejected_naming_key_value_and_expectation(path, value, words):
    """Each wrong type or out-of-range value is IncorrectJSONConfigFile naming key, value, expectation."""
    message = rejected(with_value(sample(), path, value))
    for word in words:
        assert word in message, message


def test_snapshot_timeout_is_checked_against_the_configured_freeze_timeout():
    """The snapshot command's timeout must be below the freeze timeout actually set, not the default."""
    data = with_value(sample(), (Q, "snapshot"), {**CMD, "timeoutSeconds": 90})
    assert "less than quiesce.freezeTimeoutSeconds (60)" in rejected(data)
    config = parse(with_value(data, (Q, "freezeTimeoutSeconds"), 120)).config
    assert config.quiesce.snapshot.timeout_s == 90.0


def test_error_class_carries_azure_name_and_code():
    """A rejected config raises IncorrectJSONConfigFile, a ConfigError with Azure's name and code 305."""
    with pytest.raises(ConfigError) as info:
        parse(with_value(sample(), ("timeoutInSeconds",), 0))
    assert isinstance(info.value, IncorrectJSONConfigFile)
    assert (info.value.azure_name, info.value.azure_code) == ("IncorrectJSONConfigFile", 305)


def test_long_values_are_truncated_in_messages():
    """A huge wrong value is shown cut to about 80 characters, not pasted whole."""
    message = rejected(with_value(sample(), ("pluginName",), ["x" * 10_000]))
    shown = message.split("pluginName = ", 1)[1].split(": expected", 1)[0]
    assert shown.endswith("...") and len(shown) <= 80


# ---------------------------------------------------------------------------
# keys: required, unknown, duplicate


@pytest.mark.parametrize("key", ["preScriptLocation", "postScriptLocation"])
def test_missing_required_key(key):
    """Each script location is required: leaving it out names the key and says it is required."""
    data = sample()
    del data[key]
    message = rejected(data)
    assert f"{key} is missing" in message and "required" in message


@pytest.mark.parametrize(
    "key",
    [k for k in AZURE_KEYS if k not in ("preScriptLocation", "postScriptLocation")],
)
def test_every_other_azure_key_is_optional(key):
    """Every Azure key except the script locations may be left out."""
    data = full_sample()
    del data[key]
    parse(data)


def test_unknown_top_level_key_is_a_warning_not_an_error():
    """A key Azure may add later is reported as a warning and otherwise ignored."""
    loaded = parse(with_value(sample(), ("newAzureSetting",), {"x": 1}))
    assert loaded.config == parse(sample()).config
    assert len(loaded.warnings) == 1
    assert "newAzureSetting" in loaded.warnings[0] and "ignored" in loaded.warnings[0]


def test_misspelt_top_level_key_warning_suggests_the_real_one():
    """Azure's keys are case-sensitive; a near miss is warned about with the key it probably meant."""
    data = sample()
    data["TimeoutInSeconds"] = data.pop("timeoutInSeconds")
    loaded = parse(data)
    assert loaded.config.timeout_s == cfg.DEFAULT_SCRIPT_TIMEOUT_S
    assert "did you mean timeoutInSeconds?" in loaded.warnings[0]


def test_misspelt_extension_key_warning_suggests_quiesce():
    """A "Quiesce" object is not ours: it is ignored with a hint, and the defaults apply."""
    loaded = parse(with_value(sample(), ("Quiesce",), {"preflush": False}))
    assert loaded.config.quiesce == Extensions()
    assert "did you mean quiesce?" in loaded.warnings[0]


def test_app_name_is_known_to_azure_so_no_warning():
    """``appName`` (read by Azure for telemetry) is accepted without a warning."""
    loaded = parse(with_value(sample(), ("appName",), "mysql"))
    assert loaded.warnings == () and loaded.config.app_name == "mysql"


def test_odd_unknown_key_is_quoted_in_warning():
    """An unknown key that is not a plain name is shown JSON-quoted."""
    loaded = parse(with_value(sample(), ("a.b c",), 1))
    assert '["a.b c"]' in loaded.warnings[0]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            '{"preScriptLocation": "/a", "postScriptLocation": "/b", "preScriptLocation": "/c"}',
            "preScriptLocation",
        ),
        (
            '{"preScriptLocation": "/a", "postScriptLocation": "/b", '
            '"quiesce": {"snapshot": {"mode": "none", "mode": "hold"}}}',
            "quiesce.snapshot.mode",
        ),
        (
            '{"preScriptLocation": "/a", "postScriptLocation": "/b", "x": [{}, {"k": 1, "k": 1}]}',
            "x[1].k",
        ),
    ],
    ids=["top-level", "nested", "inside-unknown-key"],
)
def test_duplicate_keys_are_rejected_with_their_path(text, path):
    """A key given twice anywhere is an error naming its JSON path, even when both values agree."""
    with pytest.raises(IncorrectJSONConfigFile) as info:
        parse_config(text, source=SOURCE)
    assert f"duplicate key {path}:" in str(info.value)


# ---------------------------------------------------------------------------
# file-level faults


def test_invalid_json_names_line_and_column():
    """A syntax error reports the line and column where the parser stopped."""
    text = '{\n  "preScriptLocation": "/a",\n  "postScriptLocation": "/b",,\n}'
    with pytest.raises(IncorrectJSONConfigFile) as info:
        parse_config(text, source=SOURCE)
    assert "invalid JSON at line 3, column 30" in str(info.value)


@pytest.mark.parametrize("document", ["[]", '"config"', "1", "null", "true", '[{"preScriptLocation": "/a"}]'])
def test_top_level_must_be_an_object(document):
    """Any JSON value but an object at the top level is rejected."""
    with pytest.raises(IncorrectJSONConfigFile, match=r"top level .*expected a JSON object"):
        parse_config(document, source=SOURCE)


@pytest.mark.parametrize("text", ["", "   \n\t", "\ufeff"])
def test_empty_file_is_rejected(text):
    """An empty (or blank) file is rejected as empty."""
    with pytest.raises(IncorrectJSONConfigFile, match="empty"):
        parse_config(text.encode(), source=SOURCE)


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_non_finite_numbers_are_rejected(token):
    """Python's json accepts NaN/Infinity and turns 1e400 into inf; none of them is JSON."""
    text = '{"preScriptLocation": "/a", "postScriptLocation": "/b", "quiesce": {"graceSeconds": TOKEN}}'
    text = text.replace("TOKEN", token)
    with pytest.raises(IncorrectJSONConfigFile) as info:
        parse_config(text, source=SOURCE)
    assert f"quiesce.graceSeconds = {token}: expected a finite number" in str(info.value)


def test_not_utf8_is_rejected_with_offset():
    """Bytes that are not UTF-8 give IncorrectJSONConfigFile naming the byte and its offset."""
    data = b'{"preScriptLocation": "/a\xff", "postScriptLocation": "/b"}'
    with pytest.raises(IncorrectJSONConfigFile, match=r"not UTF-8 text: byte 0xff at offset 25"):
        parse_config(data, source=SOURCE)


def test_utf16_is_not_guessed():
    """UTF-16 text (which json.loads on bytes would silently accept) is rejected as not UTF-8."""
    data = json.dumps(sample()).encode("utf-16")
    with pytest.raises(IncorrectJSONConfigFile, match="not UTF-8"):
        parse_config(data, source=SOURCE)


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_utf8_bom_is_accepted(as_bytes):
    """A UTF-8 byte order mark (as some editors write) changes nothing, in bytes or in text."""
    text = "\ufeff" + json.dumps(sample())
    assert parse_config(text.encode() if as_bytes else text).config == parse(sample()).config


def test_non_ascii_values_survive():
    """Non-ASCII paths and params come through as text, escaped or not."""
    data = with_value(sample(), ("preScriptParams",), ["données", "日本"])
    raw = json.dumps(data, ensure_ascii=False).encode()
    assert parse_config(raw).config.pre_params == ("données", "日本")


@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "str"])
def test_oversized_input_is_rejected(as_bytes):
    """Input larger than MAX_CONFIG_BYTES is refused before parsing."""
    data = sample()
    data["padding"] = "x" * MAX_CONFIG_BYTES
    text = json.dumps(data)
    with pytest.raises(IncorrectJSONConfigFile, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        parse_config(text.encode() if as_bytes else text, source=SOURCE)


def test_deep_nesting_is_an_error_not_a_recursion_crash():
    """Nesting deeper than the parser can follow is IncorrectJSONConfigFile, not RecursionError."""
    with pytest.raises(IncorrectJSONConfigFile, match="nested too deeply"):
        parse_config('{"x": ' + "[" * 200_000 + "]" * 200_000 + "}")


def test_moderate_nesting_in_unknown_key_is_only_a_warning():
    """Deep but parseable data under an unknown key does not break the checks."""
    loaded = parse_config(
        '{"preScriptLocation": "/a", "postScriptLocation": "/b", "x": ' + "[" * 500 + "]" * 500 + "}"
    )
    assert len(loaded.warnings) == 1


def test_huge_integer_is_an_error():
    """An integer with more digits than Python converts is IncorrectJSONConfigFile, naming no Python fix."""
    text = '{"preScriptLocation": "/a", "postScriptLocation": "/b", "timeoutInSeconds": ' + "9" * 5000 + "}"
    with pytest.raises(IncorrectJSONConfigFile, match="invalid JSON") as info:
        parse_config(text)
    assert "set_int_max_str_digits" not in str(info.value)


# ---------------------------------------------------------------------------
# load_config: files and the read hook


def test_load_config_reads_a_file(tmp_path):
    """load_config reads and parses a real file and records its path as the source."""
    path = tmp_path / "VMSnapshotScriptPluginConfig.json"
    path.write_text(json.dumps(full_sample()))
    loaded = load_config(str(path))
    assert loaded.source == str(path) and loaded.config == parse(full_sample()).config


def test_missing_file_raises_config_not_found(tmp_path):
    """A missing file raises ConfigNotFoundError naming the path (Azure code 316)."""
    path = tmp_path / "absent.json"
    with pytest.raises(ConfigNotFoundError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and info.value.azure_code == 316


def test_missing_parent_raises_config_not_found(tmp_path):
    """A path through a regular file (ENOTDIR) is also "not found"."""
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigNotFoundError):
        load_config(str(tmp_path / "file" / "config.json"))


def test_directory_raises_config_not_found(tmp_path):
    """A directory at the path is no config file (Azure's isfile check agrees)."""
    with pytest.raises(ConfigNotFoundError, match="a directory, not a regular file"):
        load_config(str(tmp_path))


@pytest.mark.timeout(10)
def test_fifo_is_rejected_without_hanging(tmp_path):
    """A FIFO planted at the path is refused at once, not waited on."""
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(ConfigNotFoundError, match="a FIFO"):
        load_config(str(fifo))


def test_oversized_file_is_rejected(tmp_path):
    """A file over the size limit is refused (only the limit plus one byte is read)."""
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_CONFIG_BYTES + 10))
    with pytest.raises(IncorrectJSONConfigFile, match="larger than"):
        load_config(str(path))


def test_read_hook_supplies_the_bytes():
    """The permission module can hand over the bytes it read from the descriptor it checked."""
    seen: list[str] = []

    def read(path: str) -> bytes:
        seen.append(path)
        return json.dumps(sample()).encode()

    loaded = load_config("/checked/config.json", read=read)
    assert seen == ["/checked/config.json"]
    assert loaded.source == "/checked/config.json" and loaded.config.timeout_s == 30


def test_read_hook_errors_are_mapped():
    """OSErrors from the read hook become ConfigNotFoundError or IncorrectJSONConfigFile, naming the path."""

    def denied(path: str) -> bytes:
        raise PermissionError(13, "Permission denied", path)

    def absent(path: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(IncorrectJSONConfigFile, match=r"/x\.json: cannot read: Permission denied"):
        load_config("/x.json", read=denied)
    with pytest.raises(ConfigNotFoundError, match=r"/x\.json"):
        load_config("/x.json", read=absent)


def test_read_hook_errors_from_parse_name_the_path():
    """Faults in bytes from the read hook are reported against the path given."""
    with pytest.raises(IncorrectJSONConfigFile, match=r"^/x\.json: invalid JSON"):
        load_config("/x.json", read=lambda path: b"{")


# ---------------------------------------------------------------------------
# to_dict and effective timeout


def test_to_dict_uses_azure_key_names_and_is_json():
    """to_dict gives Azure's key names, plain JSON types, and the full extension object."""
    data = parse(full_sample()).config.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == set(AZURE_KEYS) | {EXTENSION_KEY}
    assert set(data[EXTENSION_KEY]) == set(EXTENSION_KEYS)
    assert set(data[EXTENSION_KEY]["snapshot"]) == set(SNAPSHOT_KEYS)


def test_to_dict_omits_absent_app_name():
    """appName is written only when the config had one (null is not a valid appName)."""
    assert "appName" not in parse(sample()).config.to_dict()


def test_snapshot_to_dict_only_has_command_keys_for_commands():
    """none and hold write only the mode, so the result parses again."""
    assert SnapshotSpec(SnapshotMode.HOLD).to_dict() == {"mode": "hold"}
    assert SnapshotSpec().to_dict() == {"mode": "none"}


def test_loaded_config_to_dict():
    """LoadedConfig.to_dict carries the source, the config and the warnings."""
    loaded = parse(with_value(sample(), ("extra",), 1))
    data = loaded.to_dict()
    assert data["source"] == SOURCE and data["config"] == loaded.config.to_dict()
    assert data["warnings"] == list(loaded.warnings)


@pytest.mark.parametrize(
    ("json_timeout", "host", "expected"),
    [
        (30, None, 30),
        (1800, None, 1800),
        (30, PluginHostConfig(timeout_s=20), 20),
        (30, PluginHostConfig(timeout_s=1800), 30),
        (30, DEFAULT_PLUGINHOST, 30),
    ],
)
def test_effective_timeout_is_the_json_value_capped_by_the_host(json_timeout, host, expected):
    """Each script's timeout is min(JSON timeoutInSeconds, plugin host timeoutInSeconds)."""
    config = PluginConfig(pre_script="/a", post_script="/b", timeout_s=json_timeout)
    assert effective_timeout_s(config, host) == expected


# ---------------------------------------------------------------------------
# the plugin host INI


def test_shipped_pluginhost_parses_to_the_default():
    """Azure's shipped VMSnapshotPluginHost.conf parses to DEFAULT_PLUGINHOST's settings, no warnings."""
    host = parse_pluginhost(SHIPPED_INI.encode(), source=INI_SOURCE)
    assert host.source == INI_SOURCE and host.warnings == ()
    assert (host.timeout_s, host.plugins) == (DEFAULT_PLUGINHOST.timeout_s, DEFAULT_PLUGINHOST.plugins)
    assert host.plugins == (PluginEntry("ScriptRunner", "/etc/azure", cfg.DEFAULT_CONFIG_PATH),)


def test_load_pluginhost_missing_file_is_none(tmp_path):
    """No INI file is not an error: load_pluginhost returns None."""
    assert load_pluginhost(str(tmp_path / "absent.conf")) is None


def test_load_pluginhost_reads_a_file(tmp_path):
    """load_pluginhost reads a real file and names it as the source."""
    path = tmp_path / "VMSnapshotPluginHost.conf"
    path.write_text(SHIPPED_INI.replace("1800", "600"))
    host = load_pluginhost(str(path))
    assert host is not None and host.timeout_s == 600 and host.source == str(path)


def test_load_pluginhost_directory_and_unreadable(tmp_path):
    """A directory or an unreadable file is IncorrectPluginhostFile (Azure code 304) naming the path."""
    with pytest.raises(IncorrectPluginhostFile, match="a directory") as info:
        load_pluginhost(str(tmp_path))
    assert info.value.azure_code == 304

    def denied(path: str) -> bytes:
        raise PermissionError(13, "Permission denied", path)

    with pytest.raises(IncorrectPluginhostFile, match=r"/h\.conf: cannot read"):
        load_pluginhost("/h.conf", read=denied)


def test_pluginhost_keys_are_case_insensitive_like_azure():
    """configparser folds key case, as in Azure, so TIMEOUTINSECONDS works."""
    host = parse_pluginhost(SHIPPED_INI.replace("timeoutInSeconds: 1800", "TIMEOUTINSECONDS = 90"))
    assert host.timeout_s == 90


def test_pluginhost_timeout_defaults_to_1800():
    """Without timeoutInSeconds the cap is Azure's 1800 s."""
    host = parse_pluginhost(SHIPPED_INI.replace("timeoutInSeconds: 1800\n", ""))
    assert host.timeout_s == MAX_TIMEOUT_S


def test_pluginhost_zero_plugins_means_no_scripts():
    """numberOfPlugins: 0 is valid and lists no plugins; the unused entries become warnings."""
    host = parse_pluginhost(SHIPPED_INI.replace("numberOfPlugins: 1", "numberOfPlugins: 0"))
    assert host.plugins == ()
    assert {"[pre_post] pluginName0 ignored: numberOfPlugins is 0"} <= set(host.warnings)


def test_pluginhost_two_plugins():
    """Several ScriptRunner plugins, each with its own JSON config, are listed in order."""
    text = SHIPPED_INI.replace("numberOfPlugins: 1", "numberOfPlugins: 2") + ini(
        "pluginName1 = ScriptRunner", "pluginPath1 = /etc/azure", "pluginConfigPath1 = /etc/azure/second.json"
    )
    host = parse_pluginhost(text)
    assert [plugin.config_path for plugin in host.plugins] == [
        cfg.DEFAULT_CONFIG_PATH,
        "/etc/azure/second.json",
    ]
    assert host.to_dict()["numberOfPlugins"] == 2


def test_pluginhost_unknown_keys_and_sections_are_warnings():
    """Unknown keys, other sections and entries beyond numberOfPlugins are warned about, not fatal."""
    text = SHIPPED_INI + ini("timeout = 30", "pluginName5 = x", "[SnapshotThread]", "fsfreeze = True")
    host = parse_pluginhost(text)
    assert host.plugins == DEFAULT_PLUGINHOST.plugins
    assert set(host.warnings) == {
        "section [SnapshotThread] ignored",
        "[pre_post] unknown key timeout ignored",
        "[pre_post] pluginName5 ignored: numberOfPlugins is 1",
    }


def test_pluginhost_to_dict_is_json():
    """PluginHostConfig.to_dict is plain JSON data in the INI's key names."""
    data = DEFAULT_PLUGINHOST.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["plugins"] == [
        {
            "pluginName": "ScriptRunner",
            "pluginPath": "/etc/azure",
            "pluginConfigPath": cfg.DEFAULT_CONFIG_PATH,
        }
    ]


BAD_INI = [
    (SHIPPED_INI.replace("1800", "3600"), ['timeoutInSeconds = "3600"', "an integer from 1 to 1800"]),
    (SHIPPED_INI.replace("1800", "0"), ['timeoutInSeconds = "0"', "from 1 to 1800"]),
    (SHIPPED_INI.replace("1800", "-5"), ["timeoutInSeconds", "an integer"]),
    (SHIPPED_INI.replace("1800", "+5"), ["timeoutInSeconds", "an integer"]),
    (SHIPPED_INI.replace("1800", "1_800"), ["timeoutInSeconds", "an integer"]),
    (SHIPPED_INI.replace("1800", "30.0"), ["timeoutInSeconds", "an integer"]),
    (SHIPPED_INI.replace("1800", ""), ['timeoutInSeconds = ""', "an integer"]),
    (SHIPPED_INI.replace("numberOfPlugins: 1\n", ""), ["numberOfPlugins is missing", "no scripts"]),
    (
        SHIPPED_INI.replace("numberOfPlugins: 1", "numberOfPlugins: one"),
        ['numberOfPlugins = "one"', "integer"],
    ),
    (
        SHIPPED_INI.replace("numberOfPlugins: 1", f"numberOfPlugins: {MAX_PLUGINS + 1}"),
        ["numberOfPlugins", f"from 0 to {MAX_PLUGINS}"],
    ),
    (SHIPPED_INI.replace("numberOfPlugins: 1", "numberOfPlugins: 2"), ["pluginName1 is missing"]),
    (SHIPPED_INI.replace("pluginPath0: /etc/azure\n", ""), ["pluginPath0 is missing"]),
    (SHIPPED_INI.replace("pluginPath0: /etc/azure", "pluginPath0:"), ['pluginPath0 = ""', "a value"]),
    (
        SHIPPED_INI.replace("pluginName0: ScriptRunner", "pluginName0: oracle_plugin"),
        ['pluginName0 = "oracle_plugin"', "ScriptRunner", "Python"],
    ),
    (
        SHIPPED_INI.replace("/etc/azure/VMSnapshotScriptPluginConfig.json", "config.json"),
        ['pluginConfigPath0 = "config.json"', "absolute path"],
    ),
    (
        SHIPPED_INI.replace("numberOfPlugins: 1", "numberOfPlugins: 2")
        + ini(
            "pluginName1: ScriptRunner",
            "pluginPath1: /x",
            "pluginConfigPath1: /etc/azure/VMSnapshotScriptPluginConfig.json",
        ),
        ["pluginConfigPath1", "already used by plugin 0"],
    ),
    (SHIPPED_INI.replace("[pre_post]", "[prepost]"), ["no [pre_post] section"]),
    ("", ["no [pre_post] section"]),
    ("timeoutInSeconds: 30\n" + SHIPPED_INI, ["line 1", "before any [section] header"]),
    (SHIPPED_INI + "timeoutInSeconds: 30\n", ["line 7", "timeoutinseconds appears more than once"]),
    (SHIPPED_INI + "[pre_post]\n", ["line 7", "[pre_post] appears more than once"]),
    (SHIPPED_INI + "just some words\n", ["line 7", "cannot parse", "just some words"]),
]


@pytest.mark.parametrize(("text", "words"), BAD_INI, ids=[f"ini-{i}" for i in range(len(BAD_INI))])
def test_bad_pluginhost_is_rejected_naming_the_key(text, words):
    """Each broken plugin host INI is IncorrectPluginhostFile naming the file, the key or line, and why."""
    message = ini_rejected(text)
    for word in words:
        assert word in message, message


def test_pluginhost_not_utf8():
    """Bytes that are not UTF-8 are IncorrectPluginhostFile."""
    assert "not UTF-8" in ini_rejected(SHIPPED_INI.encode() + b"# \xff\n")


def test_pluginhost_bom_and_percent_are_fine():
    """A UTF-8 BOM is ignored and a "%" in a path is a plain character (no interpolation)."""
    text = SHIPPED_INI.replace("/etc/azure/VMSnapshot", "/etc/azure/100%/VMSnapshot")
    host = parse_pluginhost(b"\xef\xbb\xbf" + text.encode())
    assert host.plugins[0].config_path == "/etc/azure/100%/VMSnapshotScriptPluginConfig.json"


# ---------------------------------------------------------------------------
# hypothesis: round trip

TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
ABSOLUTE = TEXT.map(lambda s: "/" + s)


@st.composite
def snapshots(draw: st.DrawFn, freeze_timeout_s: float) -> SnapshotSpec:
    """Any valid SnapshotSpec for a given freeze timeout."""
    mode = draw(st.sampled_from(SnapshotMode))
    # A command needs a timeout from the minimum to below the freeze timeout:
    # with the freeze timeout at the minimum there is none.
    if mode is not SnapshotMode.COMMAND or freeze_timeout_s <= MIN_FREEZE_TIMEOUT_S:
        return SnapshotSpec(mode if mode is not SnapshotMode.COMMAND else SnapshotMode.HOLD)
    argv = (draw(ABSOLUTE), *draw(st.lists(TEXT, max_size=4)))
    timeout = draw(st.floats(min_value=MIN_FREEZE_TIMEOUT_S, max_value=freeze_timeout_s, exclude_max=True))
    return SnapshotSpec(mode, argv, timeout)


@st.composite
def extensions(draw: st.DrawFn) -> Extensions:
    """Any valid Extensions, ranges taken from config's constants."""
    freeze = draw(st.floats(min_value=MIN_FREEZE_TIMEOUT_S, max_value=MAX_FREEZE_TIMEOUT_S))
    return Extensions(
        targets=tuple(draw(st.lists(ABSOLUTE, max_size=3))),
        exclude=tuple(draw(st.lists(ABSOLUTE, max_size=3))),
        exclude_fstypes=tuple(draw(st.lists(TEXT.filter(str.strip), max_size=3))),
        freeze_timeout_s=freeze,
        grace_s=draw(st.floats(min_value=0, max_value=MAX_GRACE_S)),
        retry_backoff_s=draw(st.floats(min_value=0, max_value=MAX_RETRY_BACKOFF_S)),
        hook_directory=draw(st.none() | ABSOLUTE),
        snapshot=draw(snapshots(freeze)),
        preflush=draw(st.booleans()),
        expedite_rcu=draw(st.booleans()),
        parallel_freeze=draw(st.booleans()),
    )


def plugin_configs() -> st.SearchStrategy[PluginConfig]:
    """Any valid PluginConfig, ranges taken from config's constants."""
    params = st.lists(TEXT, max_size=4).map(tuple)
    retries = st.integers(min_value=0, max_value=MAX_RETRIES)
    return st.builds(
        PluginConfig,
        pre_script=ABSOLUTE,
        post_script=ABSOLUTE,
        plugin_name=TEXT,
        pre_params=params,
        post_params=params,
        pre_retries=retries,
        post_retries=retries,
        timeout_s=st.integers(min_value=MIN_TIMEOUT_S, max_value=MAX_TIMEOUT_S),
        continue_on_failure=st.booleans(),
        fs_freeze_enabled=st.booleans(),
        poll_s=st.integers(min_value=MIN_POLL_S, max_value=MAX_POLL_S),
        app_name=st.none() | TEXT,
        quiesce=extensions(),
    )


@settings(max_examples=1000, deadline=None)
@given(config=plugin_configs(), ascii_only=st.booleans())
def test_round_trip_through_to_dict_and_json(config, ascii_only):
    """Any valid config survives to_dict -> JSON text -> parse_config unchanged, with no warnings."""
    text = json.dumps(config.to_dict(), ensure_ascii=ascii_only)
    loaded = parse_config(text.encode(), source=SOURCE)
    assert loaded.config == config
    assert loaded.warnings == ()


# ---------------------------------------------------------------------------
# hypothesis: fuzzing never raises anything but the config error

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(["", "/", "/bin/true", "false", "none", "command", "hold", "ScriptRunner"])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


def parse_or_config_error(text: str | bytes) -> LoadedConfig | None:
    """Parse; return None on IncorrectJSONConfigFile; any other exception fails the test."""
    try:
        return parse_config(text, source=SOURCE)
    except IncorrectJSONConfigFile as err:
        assert str(err).startswith(f"{SOURCE}: ")
        return None


@settings(max_examples=600 * FUZZ_SCALE, deadline=None)
@given(value=JSON_VALUES)
def test_fuzz_any_json_value(value):
    """Any JSON value at all (NaN and huge numbers included) either parses or is IncorrectJSONConfigFile."""
    parse_or_config_error(json.dumps(value))


@settings(max_examples=500 * FUZZ_SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    top=st.dictionaries(st.sampled_from((*AZURE_KEYS, EXTENSION_KEY)), JSON_VALUES, max_size=8),
    extension=st.dictionaries(st.sampled_from(EXTENSION_KEYS), JSON_VALUES, max_size=6),
    snapshot=st.dictionaries(st.sampled_from(SNAPSHOT_KEYS), JSON_VALUES, max_size=3),
    paths=st.tuples(ABSOLUTE, ABSOLUTE),
)
def test_fuzz_known_keys_with_random_values(top, extension, snapshot, paths):
    """Known keys (Azure's, quiesce's, snapshot's) with random values never raise another exception."""
    document: dict[str, Any] = {"preScriptLocation": paths[0], "postScriptLocation": paths[1], **top}
    if EXTENSION_KEY not in top:
        document[EXTENSION_KEY] = {**extension, "snapshot": snapshot}
    parse_or_config_error(json.dumps(document))


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (dict keys and list indices) inside a JSON value."""
    paths: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(leaf_paths(child, (*prefix, key)))
    return paths


FULL_SAMPLE_PATHS = leaf_paths(full_sample())
OUT_OF_RANGE = st.sampled_from(
    [-1, 0, -0.0, 0.5, 1.5, 6, 11, 301, 1801, 3601, 10**6, 2**63, -(2**63), 1e300, True, False, "1", None]
)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """The full sample with one key dropped or one value replaced; returns it and the key touched."""
    document = full_sample()
    path = draw(st.sampled_from(FULL_SAMPLE_PATHS))
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    kind = draw(st.sampled_from(["drop", "replace", "out-of-range"]))
    if kind == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(OUT_OF_RANGE if kind == "out-of-range" else JSON_VALUES)
    named = next(key for key in reversed(path) if isinstance(key, str))
    return document, named


@settings(max_examples=1500 * FUZZ_SCALE, deadline=None)
@given(mutation=mutations())
def test_fuzz_mutated_sample(mutation):
    """One mutation of a valid config either still parses or is rejected naming the key mutated."""
    document, key = mutation
    if parse_or_config_error(json.dumps(document)) is None:
        with pytest.raises(IncorrectJSONConfigFile) as info:
            parse(document)
        assert key in str(info.value)


@settings(max_examples=500 * FUZZ_SCALE, deadline=None)
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_raw_bytes(data):
    """Arbitrary bytes either parse or raise IncorrectJSONConfigFile."""
    parse_or_config_error(data)


@settings(max_examples=500 * FUZZ_SCALE, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=len(json.dumps(full_sample()))),
    junk=st.sampled_from(["", "}", "{", ",", '"', "\\", "\x00", "NaN", "\ud800", "]"]),
)
def test_fuzz_truncated_and_spliced_text(cut, junk):
    """A valid config's text cut short or with junk spliced in parses or is IncorrectJSONConfigFile."""
    text = json.dumps(full_sample())
    parse_or_config_error(text[:cut] + junk + text[cut:] if junk else text[:cut])


INI_LINES = st.sampled_from(
    [
        "[pre_post]",
        "[other]",
        "[pre_post",
        "timeoutInSeconds: 30",
        "timeoutInSeconds = abc",
        "numberOfPlugins: 1",
        "numberOfPlugins: 3",
        "pluginName0: ScriptRunner",
        "pluginName1: ScriptRunner",
        "pluginPath0: /etc/azure",
        "pluginConfigPath0: /etc/azure/a.json",
        "pluginConfigPath1: /etc/azure/b.json",
        "pluginPath1: /p",
        "  continued",
        "# comment",
        "%(x)s = y",
        "=",
        ":",
        "",
    ]
) | st.text(max_size=20)


def parse_ini_or_error(text: str) -> PluginHostConfig | None:
    """Parse INI text; None on IncorrectPluginhostFile; any other exception fails the test."""
    try:
        return parse_pluginhost(text, source=INI_SOURCE)
    except IncorrectPluginhostFile as err:
        assert str(err).startswith(f"{INI_SOURCE}: ")
        return None


@settings(max_examples=800, deadline=None)
@given(lines=st.lists(INI_LINES, max_size=10))
def test_fuzz_pluginhost(lines):
    """Any INI text built from plausible and random lines parses or raises IncorrectPluginhostFile."""
    host = parse_ini_or_error("\n".join(lines))
    if host is not None:
        assert 1 <= host.timeout_s <= MAX_TIMEOUT_S
        assert all(plugin.config_path.startswith("/") for plugin in host.plugins)


def test_constants_are_consistent():
    """The exported limits agree with the documented Azure ranges and with each other."""
    assert (MIN_TIMEOUT_S, MAX_TIMEOUT_S) == (1, 1800)
    assert (MIN_POLL_S, cfg.DEFAULT_POLL_S, MAX_POLL_S) == (1, 3, 5)
    assert 0 < DEFAULT_FREEZE_TIMEOUT_S <= MAX_FREEZE_TIMEOUT_S
    assert 0 <= cfg.DEFAULT_GRACE_S <= MAX_GRACE_S
    assert not math.isnan(cfg.DEFAULT_RETRY_BACKOFF_S)
