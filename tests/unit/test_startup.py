"""What a command loads before it acts, and that building only its parser changes nothing.

``quiesce thaw`` runs while filesystems are frozen (``freeze --hold``;
snapshot; ``thaw``), and ``quiesce run``/``freeze`` spend their start-up
before the first FIFREEZE: each must import only what it runs. These tests
check the modules a real process has loaded (a behaviour, not a timing), and
that the parser built for one command parses, helps and fails exactly as the
whole parser does.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
import uuid

import pytest

from quiesce.cli.commands import OWN_COMMANDS, command_of
from quiesce.cli.exits import Exit
from quiesce.cli.fastpath import thaw_args
from quiesce.cli.parser import UsageError, build_parser

#: A run directory that does not exist, on a path only root can change.
MISSING_RUN_DIR = f"/run/quiesce-unit-test-missing-{uuid.uuid4().hex}"

#: Loaded by none of the commands below: the other commands' packages, the slow-to-load stdlib
#: modules they pull in, and the version lookup.
NEVER = (
    "quiesce.bench",
    "quiesce.fleet",
    "quiesce.qga",
    "quiesce.demo",
    "quiesce.sandbox",
    "quiesce.cli.recover",
    "quiesce.cli.status",
    "importlib.metadata",
    "subprocess",
    "ctypes",
    "traceback",
    "secrets",
)
#: Also not loaded by `quiesce thaw --json` releasing a holder: freezing, running, Azure's
#: config readers, the C extension (only recovery and --force call FITHAW themselves), and
#: dataclasses (the slowest import it would need; text output loads it once released), and
#: argparse: a plain thaw command line is parsed by cli/fastpath.py.
NOT_FOR_THAW = (
    "quiesce.runner",
    "quiesce.supervise",
    "quiesce.engine.freeze",
    "quiesce.engine.native",
    "quiesce._native",
    "_cffi_backend",
    "quiesce.azure.config",
    "quiesce.azure.text",
    "quiesce.cli.holder",
    "quiesce.cli.freeze",
    "quiesce.cli.run",
    "quiesce.engine.mountinfo",
    "dataclasses",
    "inspect",
    "configparser",
    "difflib",
    "threading",
    "argparse",
    "gettext",
    "shutil",
    "quiesce.cli.parser",
)

_PROBE = """
import json, sys
from quiesce.cli import main
code = main(sys.argv[1:])
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""


def loaded_by(*argv: str) -> tuple[int, set[str]]:
    """Run ``quiesce ARGV`` in a fresh interpreter the way the console script does; its exit and modules."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(r.stdout.splitlines()[-1])
    return doc["exit"], set(doc["modules"])


def present(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules of ``names`` (or under them) that were loaded."""
    return sorted(m for m in modules for n in names if m == n or m.startswith(n + "."))


def test_thaw_imports_only_what_releasing_needs():
    """`quiesce thaw` loads the ledger, lock and proof, and none of the freezing or other commands."""
    code, modules = loaded_by("thaw", "--json", "--run-dir", MISSING_RUN_DIR)
    assert code == Exit.OK
    needed = {"quiesce.cli.thaw", "quiesce.engine.ledger", "quiesce.engine.proof", "quiesce.engine.lock"}
    assert needed <= modules
    assert present(modules, NEVER + NOT_FOR_THAW) == []


def test_run_loads_no_other_command():
    """`quiesce run` (here refused for a missing config) loads the run, not bench/qga/fleet/demo."""
    code, modules = loaded_by("run", "--json", "--config", f"{MISSING_RUN_DIR}/nope.json", "--no-pluginhost")
    assert code == Exit.CONFIG
    assert "quiesce.runner.run" in modules
    assert present(modules, NEVER) == []


def test_freeze_module_loads_no_other_command():
    """What `quiesce freeze` imports (its parser and module) loads the engine, not the other commands."""
    probe = (
        "import importlib, json, sys\n"
        "from quiesce.cli.commands import OWN_COMMANDS\n"
        "from quiesce.cli.parser import build_parser\n"
        "args = build_parser(only='freeze').parse_args(['freeze', '/srv/db', '--hold'])\n"
        "importlib.import_module(OWN_COMMANDS['freeze'].split(':')[0])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    modules = set(json.loads(r.stdout))
    assert "quiesce.engine.freeze" in modules
    # Nor Azure's config (a run's), the run or its scripts' supervision.
    assert present(modules, (*NEVER, "quiesce.azure.config", "quiesce.runner.run", "quiesce.supervise")) == []


def test_importing_the_package_loads_no_submodule():
    """``import quiesce`` loads nothing else of quiesce; a public name is imported on first use."""
    probe = (
        "import json, sys\n"
        "import quiesce\n"
        "before = sorted(m for m in sys.modules if m.startswith('quiesce'))\n"
        "freeze = quiesce.Freeze\n"
        "print(json.dumps([before, freeze.__module__, 'Freeze' in dir(quiesce), 'frozen' in dir(quiesce)]))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    before, module, listed, listed_lazy = json.loads(r.stdout)
    assert before == ["quiesce"]
    assert module == "quiesce.engine.freeze" and listed and listed_lazy


def test_unknown_attribute_of_the_package_is_an_attribute_error():
    """A name the package does not have raises AttributeError (so hasattr and getattr defaults work)."""
    import quiesce

    with pytest.raises(AttributeError, match="no_such_name"):
        _ = quiesce.no_such_name  # type: ignore[attr-defined]
    assert getattr(quiesce, "no_such_name", 7) == 7


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["thaw"], "thaw"),
        (["run", "--json"], "run"),
        (["--json", "thaw"], None),
        (["--help"], None),
        (["bench", "/x"], None),
        (["thw"], None),
        ([], None),
    ],
)
def test_command_of_is_only_a_leading_own_command(argv, expected):
    """Only a first word naming one of the parser's own commands selects the one-command parser."""
    assert command_of(argv) == expected


def _outcome(parser_for, argv):
    """Everything a parse shows: the namespace (func by name), stdout, stderr, exit, error."""
    out, err = io.StringIO(), io.StringIO()
    result: dict[str, object] = {}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            ns = vars(parser_for(argv).parse_args(argv))
            result["namespace"] = {k: getattr(v, "__name__", v) for k, v in ns.items()}
        except SystemExit as e:
            result["exit"] = e.code
        except UsageError as e:
            result["error"] = (str(e), e.parser.prog, e.parser.format_usage())
    return {**result, "stdout": out.getvalue(), "stderr": err.getvalue()}


_ARGVS = [
    ["--help"],
    ["--json"],
    ["--no-such-option"],
    ["--run-dir"],
    ["--json", "--run-dir", "/run/x", "--wait", "2.5"],
    ["--wait", "-1"],
    ["--wait", "nan"],
    ["--force", "/mnt/a", "--force", "/mnt/b", "--ru", "/run/y"],
    ["/mnt/a", "--timeout", "5", "--hold", "--exclude", "/boot"],
    ["--config", "/etc/x.json", "--no-pluginhost", "--log-format", "json"],
    ["--log-format", "xml"],
    ["extra", "words"],
    ["--", "--json"],
]


@pytest.mark.parametrize("command", sorted(OWN_COMMANDS))
@pytest.mark.parametrize("tail", _ARGVS, ids=lambda t: " ".join(t) or "-")
def test_one_command_parser_behaves_as_the_whole_parser(command, tail):
    """Help, errors, usage and the parsed values are the same whichever parser is built."""
    argv = [command, *tail]
    whole = _outcome(lambda _: build_parser(), argv)
    alone = _outcome(lambda a: build_parser(only=command_of(a)), argv)
    assert alone == whole


def _names(ns: object) -> dict[str, object]:
    return {k: getattr(v, "__name__", v) for k, v in vars(ns).items()}


@pytest.mark.parametrize(
    "tail",
    [
        [],
        ["--json"],
        ["--json", "--json"],
        ["--run-dir", "/run/x"],
        ["--run-dir=/run/x", "--wait=0"],
        ["--wait", "2.5", "--json", "--run-dir", "/run/y"],
        ["--wait", "3600"],
        ["--wait", " 7 "],
        ["--force", "/mnt/a", "--force=/mnt/b"],
        ["--force", "", "--run-dir", ""],
        ["--run-dir", "/run/a", "--run-dir", "/run/b"],
        ["--force=-odd", "--run-dir=--json"],
    ],
    ids=lambda t: " ".join(t) or "-",
)
def test_plain_thaw_lines_skip_argparse_and_parse_as_the_parser_does(tail, monkeypatch):
    """A plain `quiesce thaw` line is parsed without argparse into the parser's namespace."""
    monkeypatch.setenv("QUIESCE_RUN_DIR", "/run/from-the-environment")
    argv = ["thaw", *tail]
    fast = thaw_args(argv)
    assert fast is not None
    whole = _outcome(lambda _: build_parser(), argv)
    assert whole["namespace"] == _names(fast)


@pytest.mark.parametrize(
    "tail",
    [
        ["--help"],
        ["-h"],
        ["--ru", "/run/x"],
        ["--run-dir"],
        ["--wait", "-1"],
        ["--wait", "nan"],
        ["--wait=3601"],
        ["--json=1"],
        ["--", "--json"],
        ["extra"],
        ["--force", "-x"],
    ],
    ids=lambda t: " ".join(t),
)
def test_other_thaw_lines_go_to_the_parser(tail):
    """Help, abbreviations, bad values and stray words are left to argparse, which answers as before."""
    assert thaw_args(["thaw", *tail]) is None


def test_thaw_fast_parse_never_disagrees_with_the_parser():
    """Random thaw lines: whenever the fast parse answers, the parser gives the same values."""
    words = ["--json", "--run-dir", "--wait", "--force", "/run/x", "5", "-1", "1e3", "nan", "", "-",
             "--run-dir=/r", "--wait=3", "--wait=-2", "--force=/m", "--ru", "-h", "--", "x", "--json=1",
             "thaw", "--wait=", "0x10", "inf"]  # fmt: skip
    rng = random.Random(1213)
    answered = 0
    for _ in range(400):
        argv = ["thaw", *rng.choices(words, k=rng.randrange(0, 6))]
        fast = thaw_args(argv)
        if fast is None:
            continue
        answered += 1
        whole = _outcome(lambda _: build_parser(), argv)
        assert whole.get("namespace") == _names(fast), argv
    assert answered > 50  # the comparison did happen
