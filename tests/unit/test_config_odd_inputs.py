"""Azure's plugin config against odd inputs: numbers as JSON spells them, tiny timeouts, argv limits.

Each case goes through the public loader (``parse_config``); a wrong value
must be ``IncorrectJSONConfigFile`` naming the key, never a traceback and
never a silent reinterpretation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from quiesce.azure.config import EXTENSION_KEY, MAX_ARG_BYTES, MAX_ARGV_BYTES, MIN_FREEZE_TIMEOUT_S
from quiesce.azure.configparse import parse_config
from quiesce.engine.freeze import FreezeOptions
from quiesce.errors import IncorrectJSONConfigFile

SOURCE = "/etc/azure/VMSnapshotScriptPluginConfig.json"
BASE = '{"preScriptLocation": "/opt/pre.sh", "postScriptLocation": "/opt/post.sh"'


def with_raw(key: str, raw: str) -> str:
    """The base config with ``key`` set to the JSON text ``raw``, written as is."""
    return f'{BASE}, "{key}": {raw}}}'


def rejected(text: str) -> str:
    """The message of the IncorrectJSONConfigFile that parsing ``text`` raises."""
    with pytest.raises(IncorrectJSONConfigFile) as info:
        parse_config(text, source=SOURCE)
    assert (info.value.azure_name, info.value.azure_code) == ("IncorrectJSONConfigFile", 305)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: ")
    return message


def parsed(data: dict[str, Any]) -> Any:
    """The PluginConfig of the base config updated with ``data``."""
    base = {"preScriptLocation": "/opt/pre.sh", "postScriptLocation": "/opt/post.sh", **data}
    return parse_config(json.dumps(base), source=SOURCE).config


# ---------------------------------------------------------------------------
# integers as JSON spells them


INTEGER_KEYS = {
    "timeoutInSeconds": "timeout_s",
    "preScriptNoOfRetries": "pre_retries",
    "postScriptNoOfRetries": "post_retries",
    "ScriptsExecutionPollTimeSeconds": "poll_s",
}


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("timeoutInSeconds", "30.0", 30),
        ("timeoutInSeconds", "1e2", 100),
        ("timeoutInSeconds", "1.8E3", 1800),
        ("timeoutInSeconds", "300e-1", 30),
        ("preScriptNoOfRetries", "-0.0", 0),
        ("preScriptNoOfRetries", "-0", 0),
        ("postScriptNoOfRetries", "1E1", 10),
        ("ScriptsExecutionPollTimeSeconds", "3.0", 3),
    ],
)
def test_whole_numbers_written_as_floats_are_integers(key, raw, expected):
    """JSON has one number type: 30.0 and 1e2 are the integers Azure's code uses; stored as int."""
    config = parse_config(with_raw(key, raw), source=SOURCE).config
    value = getattr(config, INTEGER_KEYS[key])
    assert value == expected and type(value) is int
    assert json.loads(json.dumps(config.to_dict()))[key] == expected


@pytest.mark.parametrize("key", sorted(INTEGER_KEYS))
@pytest.mark.parametrize("raw", ["30.5", "1.5", "2.000001", "1e-1"])
def test_fractions_are_refused_for_integer_keys(key, raw):
    """A fraction is not a count of retries or whole seconds: refused naming key and value, not rounded."""
    message = rejected(with_raw(key, raw))
    assert f"{key} = " in message and "not a fraction" in message


@pytest.mark.parametrize("key", sorted(INTEGER_KEYS))
@pytest.mark.parametrize(
    "raw",
    ['"30"', '"3"', "true", "false", "null", '""', "[3]", '{"v": 3}', "1e30", "1" + "0" * 30, "-1", "-1.0"],
)
def test_integer_keys_refuse_other_types_and_out_of_range(key, raw):
    """Strings, booleans, null, lists, objects, huge and negative numbers: each refused by key."""
    message = rejected(with_raw(key, raw))
    assert f"{key} = " in message and "expected an integer from" in message


@pytest.mark.parametrize("key", sorted(INTEGER_KEYS))
@pytest.mark.parametrize("raw", ["1e309", "-1e309", "NaN", "Infinity", "-Infinity"])
def test_integer_keys_refuse_non_finite_numbers(key, raw):
    """What Python's json reads as inf or nan is not JSON: refused naming the key and the text."""
    assert f"{key} = {raw}: expected a finite number" in rejected(with_raw(key, raw))


# ---------------------------------------------------------------------------
# timeouts too small to be a deadline


@pytest.mark.parametrize("raw", ["5e-324", "1e-10", "1e-400", "0.0009", "0", "-0.0"])
def test_freeze_timeout_below_a_millisecond_is_refused(raw):
    """A freeze timeout under 1 ms (one under 1 ns would become 0: "no deadline") is refused by key."""
    message = rejected(f'{BASE}, "{EXTENSION_KEY}": {{"freezeTimeoutSeconds": {raw}}}}}')
    assert f"{EXTENSION_KEY}.freezeTimeoutSeconds = " in message
    assert f"from {MIN_FREEZE_TIMEOUT_S:g} to 3600" in message


@pytest.mark.parametrize("raw", ["5e-324", "1e-10", "0.0009"])
def test_snapshot_timeout_below_a_millisecond_is_refused(raw):
    """The snapshot command's timeout has the same floor."""
    snapshot = f'{{"mode": "command", "argv": ["/bin/true"], "timeoutSeconds": {raw}}}'
    message = rejected(f'{BASE}, "{EXTENSION_KEY}": {{"snapshot": {snapshot}}}}}')
    assert f"{EXTENSION_KEY}.snapshot.timeoutSeconds = " in message and "from 0.001" in message


def test_freeze_timeout_of_a_millisecond_is_accepted():
    """The floor itself is a valid freeze timeout."""
    config = parsed({EXTENSION_KEY: {"freezeTimeoutSeconds": MIN_FREEZE_TIMEOUT_S}})
    assert config.quiesce.freeze_timeout_s == MIN_FREEZE_TIMEOUT_S


@pytest.mark.parametrize("seconds", [5e-324, 1e-10, 4e-10, 1e-9, 1.5e-9])
def test_freeze_options_never_give_the_guardian_a_zero_deadline(seconds):
    """A positive timeout is at least 1 ns for the guardian: 0 would mean no deadline at all."""
    options = FreezeOptions(timeout_s=seconds)
    assert options.timeout_ns >= 1 and options.step_timeout_ns >= 1
    assert options.timeout_ns >= int(seconds * 1e9)


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), 0.0, -1.0])
def test_freeze_options_refuse_a_timeout_that_is_no_deadline(seconds):
    """Infinite, NaN, zero or negative timeouts are refused when the options are made."""
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        FreezeOptions(timeout_s=seconds)
    with pytest.raises(ValueError, match="step timeout must be a positive number of seconds"):
        FreezeOptions(step_timeout_s=seconds)


# ---------------------------------------------------------------------------
# arguments that execve could never take


@pytest.mark.parametrize("key", ["preScriptParams", "postScriptParams"])
def test_one_argument_longer_than_the_kernel_takes_is_refused(key):
    """A parameter over MAX_ARG_STRLEN would fail every attempt with E2BIG: refused by key and index."""
    config = parsed({key: ["x" * MAX_ARG_BYTES]})
    assert (config.pre_params if key == "preScriptParams" else config.post_params) == ("x" * MAX_ARG_BYTES,)
    message = rejected(json.dumps({**json.loads(BASE + "}"), key: ["ok", "x" * (MAX_ARG_BYTES + 1)]}))
    assert f"{key}[1] = " in message and f"at most {MAX_ARG_BYTES} bytes" in message


def test_argument_length_counts_utf8_bytes():
    """The limit is in bytes as the kernel counts them, not in characters."""
    message = rejected(json.dumps({**json.loads(BASE + "}"), "preScriptParams": ["é" * 70_000]}))
    assert "preScriptParams[0] = " in message and "bytes" in message


@pytest.mark.parametrize("key", ["preScriptParams", "postScriptParams"])
def test_argument_list_too_large_for_execve_is_refused(key):
    """Many short arguments can pass every size check but the kernel's total: refused naming the key."""
    count = MAX_ARGV_BYTES // 9 + 1
    message = rejected(json.dumps({**json.loads(BASE + "}"), key: [""] * count}))
    assert message.startswith(f"{SOURCE}: {key} = ") and f"{count} of them" in message


def test_snapshot_argv_has_the_same_limits():
    """The snapshot command's argv is one execve too."""
    snapshot = {"mode": "command", "argv": ["/bin/true", "x" * (MAX_ARG_BYTES + 1)], "timeoutSeconds": 5}
    message = rejected(json.dumps({**json.loads(BASE + "}"), EXTENSION_KEY: {"snapshot": snapshot}}))
    assert f"{EXTENSION_KEY}.snapshot.argv[1] = " in message


# ---------------------------------------------------------------------------
# what a message shows


@pytest.mark.parametrize(
    ("char", "escape"),
    [("\x9b", "\\u009b"), ("\x7f", "\\u007f"), ("\u2028", "\\u2028"), ("\x1b", "\\u001b"), ("\n", "\\n")],
    ids=["C1-CSI", "DEL", "line-separator", "ESC", "newline"],
)
def test_messages_show_unprintable_characters_escaped(char, escape):
    """A value with a terminal control or a line break is named with its JSON escape, never raw."""
    message = rejected(json.dumps({**json.loads(BASE + "}"), "timeoutInSeconds": f"3{char}0"}))
    assert f'timeoutInSeconds = "3{escape}0"' in message
    assert all(c.isprintable() for c in message)


def test_unknown_key_warning_shows_unprintable_characters_escaped():
    """An unknown key holding a C1 control is warned about escaped, so the warning cannot drive a terminal."""
    loaded = parse_config(json.dumps({**json.loads(BASE + "}"), "x\x9by": 1}), source=SOURCE)
    [warning] = loaded.warnings
    assert '["x\\u009by"]' in warning and all(c.isprintable() for c in warning)


# ---------------------------------------------------------------------------
# keys as Azure reads them


@pytest.mark.parametrize(
    "second",
    [
        '"pre\\u0053criptLocation": "/x"',
        '"\\u0070reScriptLocation": "/x"',
        '"preScriptLocation": "/opt/pre.sh"',
    ],
    ids=["escaped-letter", "escaped-first", "same-value"],
)
def test_a_key_spelled_twice_with_escapes_is_a_duplicate(second):
    """Keys compare after their escapes are decoded, as Azure's json reads them: refused, not last-wins."""
    assert "duplicate key preScriptLocation" in rejected(f"{BASE}, {second}}}")


@pytest.mark.parametrize(
    "key", ["PreScriptLocation", "prescriptlocation", "preScriptLocation ", "preScriptlocation"]
)
def test_a_required_key_in_another_spelling_is_missing_with_a_hint(key):
    """Azure's keys are case-sensitive: another spelling leaves the real key missing, and says which."""
    text = json.dumps({key: "/opt/pre.sh", "postScriptLocation": "/opt/post.sh"})
    assert "preScriptLocation is missing" in rejected(text)
    loaded = parse_config(json.dumps({key: "/x", **json.loads(BASE + "}")}), source=SOURCE)
    assert "did you mean preScriptLocation?" in loaded.warnings[0]
