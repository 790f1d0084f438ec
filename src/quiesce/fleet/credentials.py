"""The files that say which etcd to trust and who we are to it, checked before they are used.

``quiesce agent`` runs as root and freezes when etcd says so. The CA
certificate (``--cacert``) decides which server is etcd; the client
certificate and key (``--cert``, ``--key``) and the password file
(``--password-file``) are the agent's identity in its group. A file that
someone but root could replace would let them put a server of their own in
etcd's place and start or abort runs at will; a key or password others can
read lets them act as the agent. So, when run by root, each file given must
be a regular file owned by root that nobody else can write, in directories
only root can write (:func:`quiesce.engine.trust.resolve`, as for the config);
a symlink is followed only from such a directory, and its target checked
the same way, link after link. The key and the
password file must also be readable by nobody else (mode 600 or 400).

Run by another user (``fleet status`` from a workstation), the files are
that user's own business: they need only exist and be regular files.

Every refusal is a :class:`CredentialFileError` naming the option, the file,
what is wrong, and the command that fixes it.
"""

from __future__ import annotations

import os
import stat

from quiesce.engine import trust
from quiesce.fleet import FleetError

#: The mode bits a key or password file may have: the owner's read and write.
SECRET_BITS = stat.S_IRUSR | stat.S_IWUSR


class CredentialFileError(FleetError):
    """A TLS or password file given to a fleet command cannot be trusted or read."""


def checked(option: str, path: str, *, secret: bool) -> str:
    """``path`` once it passed the checks of the module doc; :class:`CredentialFileError` otherwise."""
    subject = f"{option} {path}"
    try:
        st = os.stat(path)
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        why = trust.os_reason(err) if isinstance(err, OSError) else str(err)
        raise CredentialFileError(f"{subject} cannot be used: {why}") from err
    if not stat.S_ISREG(st.st_mode):
        raise CredentialFileError(f"{subject} is {trust.file_type(st.st_mode)}, not a regular file")
    if os.geteuid() != 0:
        return path
    try:
        # Every link on the way, the last ones too, is followed only from a root-only
        # directory: the file opened later by this path is the one checked now.
        _, lst = trust.resolve(os.path.abspath(path))
    except trust.UnsafeDirectoryError as err:
        raise CredentialFileError(f"{subject} is in a directory others can write: {err}") from err
    except OSError as err:
        raise CredentialFileError(f"{subject} cannot be checked: {trust.os_reason(err)}") from err
    problems = trust.owner_problems(lst)
    mode = stat.S_IMODE(lst.st_mode)
    if mode & trust.WRITABLE_BY_OTHERS:
        problems.append(f"can be written by {trust.writable_by(mode)}")
    if secret and mode & ~SECRET_BITS:
        problems.append(f"has mode bits {mode & ~SECRET_BITS:04o} set: a secret is for root only (600)")
    if problems:
        p = trust.quote(os.path.realpath(path))
        chmod = "chmod 600" if secret else "chmod go-w"
        fix = f"chown root:root {p} && {chmod} {p}" if lst.st_uid != 0 else f"{chmod} {p}"
        raise CredentialFileError(trust.refusal_message(subject, "; ".join(problems), lst, fix))
    return path
