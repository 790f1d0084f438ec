"""README.md documents every error name and code the JSON can carry, and the exit codes."""

from __future__ import annotations

import inspect
import pathlib

from quiesce import errors
from quiesce.azure.verdict import FREEZE_FAILED, FREEZE_TIMEOUT, SNAPSHOT_FAILED
from quiesce.cli.exits import COMMAND_EXITS, EXIT_MEANINGS

README = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()


def emitted_codes() -> set[tuple[str | None, int | None]]:
    """Every (name, code) pair an error class or a run result can carry."""
    pairs: set[tuple[str | None, int | None]] = set()
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.QuiesceError) and cls.azure_code is not None:
            pairs.add((cls.azure_name, cls.azure_code))
    for by_phase in errors._SCRIPT_ERRORS.values():
        pairs.update(by_phase)
    pairs.update({FREEZE_FAILED, FREEZE_TIMEOUT, SNAPSHOT_FAILED, ("RunInterrupted", None)})
    return pairs


def test_every_error_code_is_in_the_readme_table():
    """316 and 317 included: each code appears in a table row (and each name somewhere)."""
    rows = [line for line in README.splitlines() if line.startswith("| ")]
    for name, code in emitted_codes():
        if code is not None:
            assert any(f" {code} " in row or f" {code} /" in row or f"/ {code} " in row for row in rows), code
        if name is not None:
            short = name.replace("InsufficientPermissionforPost-Script", "...Post-Script")
            assert name in README or short in README, name


def test_every_exit_code_is_in_the_readme_table():
    """Each exit code of any command has a row in README's exit status table."""
    for code in {c for codes in COMMAND_EXITS.values() for c in codes} - {"130"}:
        assert f"| {code} |" in README, code
    assert set(EXIT_MEANINGS) >= {c for codes in COMMAND_EXITS.values() for c in codes}
