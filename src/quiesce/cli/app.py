"""The ``quiesce`` command line: parse, run the command, turn what it raised into an exit code and text.

This is the only place that maps exceptions to exit codes and text. Every
subcommand takes ``--json``: with it, every outcome prints one JSON object
on stdout, usage errors and unexpected errors included.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import Any

from quiesce.cli.commands import command_of
from quiesce.cli.exits import Exit, exit_code_for
from quiesce.cli.fastpath import thaw_args
from quiesce.cli.output import emit_json, reopen_closed_std_fds
from quiesce.errors import QuiesceError, SandboxError


def _error_json(err: BaseException, code: int, message: str | None = None) -> dict[str, Any]:
    return {
        "error": message or str(err),
        "error_type": type(err).__name__,
        "error_name": getattr(err, "azure_name", None),
        "error_code": getattr(err, "azure_code", None),
        "exit": code,
    }


def _report_error(
    want_json: bool, err: BaseException, code: int, message: str | None = None, prefix: str = "quiesce: "
) -> int:
    """Say why a command ended: a line on stderr and, with --json, one JSON object on stdout."""
    # Either stream may be gone: closed (Python then has None for it) or a closed pipe.
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            print(f"{prefix}{message or err}", file=sys.stderr)
    if want_json and sys.stdout is not None:
        # The exit status still says it.
        with contextlib.suppress(OSError, ValueError):
            emit_json(_error_json(err, code, message), sys.stdout)
    return code


def _wants_json(argv: Sequence[str]) -> bool:
    words = list(argv)
    if "--" in words:
        words = words[: words.index("--")]
    return "--json" in words


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``quiesce`` command.

    With ``--json``, every outcome prints one JSON object on stdout (after
    any events the command streams): a usage error and an unexpected
    error too, each with ``error``, ``error_type`` and ``exit``.
    """
    # A closed stdin, stdout or stderr must not be inherited by the next file opened.
    reopen_closed_std_fds()
    words = sys.argv[1:] if argv is None else list(argv)
    want_json = _wants_json(words)
    # `quiesce thaw` runs while a hold keeps filesystems frozen: parsed without argparse when it can be.
    args = thaw_args(words)
    if args is None:
        from quiesce.cli.parser import UsageError, build_parser

        # Only what this command needs is imported.
        parser = build_parser(only=command_of(words))
        try:
            args = parser.parse_args(words)
        except UsageError as err:
            with contextlib.suppress(OSError, ValueError):
                err.parser.print_usage(sys.stderr)
            return _report_error(want_json, err, Exit.USAGE, f"{err.parser.prog}: error: {err}", prefix="")
    want_json = bool(getattr(args, "json", False))
    try:
        return int(args.func(args))
    except (QuiesceError, SandboxError, ValueError) as err:
        return _report_error(want_json, err, int(exit_code_for(err)))
    except KeyboardInterrupt as err:
        return _report_error(want_json, err, 130, "interrupted (SIGINT)")
    except Exception as err:  # a bug or an unforeseen OS error: still one answer, and the traceback
        import traceback  # only here: loading it costs every command's start

        with contextlib.suppress(OSError, ValueError):
            traceback.print_exc(file=sys.stderr)
        return _report_error(want_json, err, Exit.ERROR, f"unexpected error: {type(err).__name__}: {err}")
