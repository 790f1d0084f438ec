"""Why a script's ``#!`` line cannot start: the interpreter, named as the kernel reads it.

When the interpreter on a ``#!`` line cannot be executed, ``execve`` fails
with ENOENT (or EACCES) and every tool reports "No such file or directory"
about the *script*, which exists. The most common cause on Azure VMs is a
script saved by a Windows editor: ``#!/bin/sh\\r\\n`` names the interpreter
``/bin/sh\\r``, carriage return included. :func:`interpreter_problem` names
the interpreter, and the CRLF when that is the cause.

The kernel's rules (``fs/binfmt_script.c``): after ``#!``, spaces and tabs
are skipped; the interpreter runs to the next space, tab or newline (a
carriage return is part of it); the line is read from the first
:data:`SHEBANG_BYTES` bytes.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import stat

from quiesce.engine import trust

#: The kernel reads at most this much of a "#!" line (BINPRM_BUF_SIZE).
SHEBANG_BYTES = 256

_INTERPRETER = re.compile(rb"#![ \t]*([^ \t\n]*)")
#: What an exec error looks like when the interpreter is the cause.
EXEC_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.ELOOP})


def interpreter(head: bytes) -> bytes | None:
    """The interpreter a ``#!`` line names, byte for byte as the kernel takes it; None without one."""
    match = _INTERPRETER.match(head)
    if match is None or not match.group(1):
        return None
    return match.group(1)


def interpreter_problem(head: bytes, script: str) -> str | None:
    """A sentence saying why the ``#!`` line of ``script`` (its first bytes ``head``) cannot run, or None.

    Names a missing interpreter (saying "the script has Windows line endings
    (CRLF)" when its name ends in a carriage return), one that is not a
    regular file, or one that is not executable. A script without ``#!`` is
    not judged: it runs with ``/bin/sh``.
    """
    name = interpreter(head)
    if name is None:
        return "its #! line names no interpreter" if head.startswith(b"#!") else None
    shown = repr(os.fsdecode(name)) if b"\r" in name else os.fsdecode(name)
    try:
        st = os.stat(name)
    except OSError as err:
        if name.endswith(b"\r"):
            return (
                f"the script has Windows line endings (CRLF): its #! line names the interpreter "
                f"{shown}, carriage return included, which does not exist; "
                f"fix: sed -i 's/\\r$//' {shlex.quote(script)}"
            )
        why = (
            "does not exist"
            if err.errno == errno.ENOENT
            else f"cannot be used: {os.strerror(err.errno or 0)}"
        )
        return f"its interpreter {shown} (on the #! line) {why}"
    if not stat.S_ISREG(st.st_mode):
        return f"its interpreter {shown} (on the #! line) is not a program file"
    if not os.access(name, os.X_OK):
        mode = stat.S_IMODE(st.st_mode)
        return f"its interpreter {shown} (on the #! line) is not executable (mode {mode:04o})"
    return None


def read_head(path: str) -> bytes:
    """The first :data:`SHEBANG_BYTES` bytes of ``path``; b"" if unreadable (a FIFO never blocks it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.pread(fd, SHEBANG_BYTES, 0)
    except OSError:
        return b""
    finally:
        os.close(fd)


def explain_exec_error(err: OSError, head: bytes, script: str) -> str | None:
    """What in ``script``'s ``#!`` line (first bytes ``head``) made its exec fail with ``err``, or None."""
    if err.errno not in EXEC_ERRNOS:
        return None
    problem = interpreter_problem(head, script)
    name = interpreter(head)
    if problem is None and err.errno == errno.ENOEXEC and name is not None:
        problem = (
            f"its interpreter {os.fsdecode(name)} (on the #! line) is not a program the kernel can run "
            f"({os.strerror(errno.ENOEXEC)})"
        )
    return problem


def untrusted_interpreter(head: bytes) -> str | None:
    """Why the interpreter on ``head``'s ``#!`` line could be changed by someone but root, or None.

    A root script runs its interpreter as root: an interpreter another user
    owns or can write, or reached through a directory or link another user
    can change, would let that user choose what runs. An interpreter that
    cannot start at all is not judged here (:func:`interpreter_problem` says
    why it cannot start).
    """
    name = interpreter(head)
    if name is None or not name.startswith(b"/"):
        return None
    shown = shlex.quote(os.fsdecode(name))
    try:
        real, st = trust.resolve(os.fsdecode(name))
    except trust.UnsafeDirectoryError as err:
        return f"its interpreter {shown} (on the #! line) is reached through an unsafe directory: {err}"
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    problems = trust.root_alone_problems(st)
    if not problems:
        return None
    where = "" if real == os.fsdecode(name) else f" ({real})"
    return trust.refusal_message(
        f"its interpreter {shown}{where} (on the #! line)", "; ".join(problems), st, ""
    )


def untrusted_program(path: str) -> str | None:
    """Why root must not execute ``path`` by its path, or None when it may.

    The file passes :func:`quiesce.engine.trust.check_program` (root's
    alone, reached only through directories and links only root can
    change), and so does the interpreter on its ``#!`` line
    (:func:`untrusted_interpreter`). Raises ``ValueError`` for a relative
    path and lets ``OSError`` through (the file is missing, say): each
    caller words those its own way.
    """
    try:
        trust.check_program(path)
    except (trust.UnsafeProgramError, trust.UnsafeDirectoryError) as err:
        return str(err)
    return untrusted_interpreter(read_head(path))
