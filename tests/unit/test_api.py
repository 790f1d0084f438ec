"""The public API: what ``import quiesce`` offers an embedding tool."""

from __future__ import annotations

import inspect
import json

import quiesce

EXPECTED = {
    "__version__",
    "APPLICATION",
    "CRASH",
    "FAILED",
    "FILESYSTEM",
    "Attempt",
    "ConfigError",
    "FilesystemResult",
    "Freeze",
    "FreezeError",
    "FreezeNotSupportedError",
    "FreezeOptions",
    "FreezeReport",
    "FreezeTimeoutError",
    "FrozenByOtherError",
    "HoldAnnouncement",
    "IncorrectJSONConfigFile",
    "LoadedConfig",
    "LockHeldError",
    "NotFrozenError",
    "Plan",
    "PluginConfig",
    "QuiesceError",
    "RunOptions",
    "RunResult",
    "ScriptError",
    "ScriptResult",
    "SkipReason",
    "Skipped",
    "Target",
    "TargetError",
    "ThawError",
    "WindowExpiredError",
    "UnsafeRunDirError",
    "frozen",
    "load_config",
    "parse_config",
    "plan",
    "run",
}


def test_all_is_exactly_the_public_api():
    """``__all__`` lists the documented names, and each exists."""
    assert set(quiesce.__all__) == EXPECTED
    for name in quiesce.__all__:
        assert hasattr(quiesce, name), name


def test_every_public_callable_and_class_is_documented():
    """Each public class and function has a docstring."""
    for name in quiesce.__all__:
        obj = getattr(quiesce, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_errors_share_one_base():
    """Every exported error derives from QuiesceError; OS-level ones are OSError too."""
    for name in quiesce.__all__:
        obj = getattr(quiesce, name)
        if inspect.isclass(obj) and issubclass(obj, Exception):
            assert issubclass(obj, quiesce.QuiesceError), name
    assert issubclass(quiesce.FrozenByOtherError, OSError)
    assert issubclass(quiesce.ThawError, OSError)


def test_run_is_the_function_not_the_module():
    """``quiesce.run`` is the run function, taking a config path, config object or None."""
    assert inspect.isfunction(quiesce.run)
    params = inspect.signature(quiesce.run).parameters
    assert list(params) == ["config", "snapshot", "options"]


def test_parsed_config_round_trips_to_json():
    """A config parsed through the API serialises to JSON in Azure's key names."""
    loaded = quiesce.parse_config('{"preScriptLocation": "/a/pre.sh", "postScriptLocation": "/a/post.sh"}')
    data = json.loads(json.dumps(loaded.config.to_dict()))
    assert data["preScriptLocation"] == "/a/pre.sh"


def test_plan_is_safe_to_call_without_root():
    """Planning reads the mount table only; it freezes nothing and needs no root."""
    p = quiesce.plan(["/proc"], vmbackup_conf=None)
    assert p.targets == ()
    [proc] = [s for s in p.skipped if s.mount.mount_point == "/proc"]
    assert proc.reason is quiesce.SkipReason.PSEUDO
