"""Which command goes where: served here, forwarded, or refused, as qemu-ga decides it.

quiesce serves the handshake (``guest-sync``, ``guest-sync-delimited``,
``guest-ping``), ``guest-info`` (its commands merged into the forwarded
agent's list) and the four fsfreeze commands; everything else goes to the
stock agent. The order of checks is qemu's: a name nobody has is "not
found"; while frozen, a command outside qemu-ga's allowlist (``qga/main.c``)
is "disabled"; then the arguments are checked; then it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from quiesce.qga.forward import Forwarder
from quiesce.qga.freezer import Freezer
from quiesce.qga.jsonstream import Parsed
from quiesce.qga.protocol import (
    BadRequest,
    QgaError,
    Request,
    check_arguments,
    disabled_while_frozen,
    not_found,
    parse_request,
    reply_error,
    reply_ok,
    request_ident,
)

#: Commands qemu-ga accepts while frozen (qemu 7.2, qga/main.c ga_freeze_allowlist).
FROZEN_ALLOWLIST = frozenset(
    {
        "guest-ping",
        "guest-info",
        "guest-sync",
        "guest-sync-delimited",
        "guest-fsfreeze-status",
        "guest-fsfreeze-thaw",
    }
)

#: Every command Debian's qemu-ga 7.2 has (qga/qapi-schema.json): while frozen, without an
#: agent to forward to, these are "disabled" as qemu-ga says, not "not found".
QEMU_GA_COMMANDS = frozenset(
    {
        "guest-sync-delimited", "guest-sync", "guest-ping", "guest-get-time", "guest-set-time",
        "guest-info", "guest-shutdown", "guest-file-open", "guest-file-close", "guest-file-read",
        "guest-file-write", "guest-file-seek", "guest-file-flush", "guest-fsfreeze-status",
        "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fsfreeze-thaw",
        "guest-fstrim", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
        "guest-network-get-interfaces", "guest-get-vcpus", "guest-set-vcpus", "guest-get-disks",
        "guest-get-fsinfo", "guest-set-user-password", "guest-get-memory-blocks",
        "guest-set-memory-blocks", "guest-get-memory-block-info", "guest-exec-status",
        "guest-exec", "guest-get-host-name", "guest-get-users", "guest-get-timezone",
        "guest-get-osinfo", "guest-get-devices", "guest-ssh-get-authorized-keys",
        "guest-ssh-add-authorized-keys", "guest-ssh-remove-authorized-keys",
        "guest-get-diskstats", "guest-get-cpustats",
    }
)  # fmt: skip

#: The commands served here, with their arguments (qga/qapi-schema.json), in the order
#: qemu-ga's ``guest-info`` lists them (the last one registered first).
OWN_COMMANDS: dict[str, dict[str, str]] = {
    "guest-fsfreeze-thaw": {},
    "guest-fsfreeze-freeze-list": {"*mountpoints": "[str]"},
    "guest-fsfreeze-freeze": {},
    "guest-fsfreeze-status": {},
    "guest-info": {},
    "guest-ping": {},
    "guest-sync": {"id": "int"},
    "guest-sync-delimited": {"id": "int"},
}


def quiesce_version() -> str:
    """The installed quiesce's version, for ``guest-info`` when no agent is forwarded to."""
    try:
        return metadata.version("quiesce")
    except metadata.PackageNotFoundError:
        return "unknown"


class Dispatcher:
    """Turn each parsed value into the reply bytes (zero or more) to write back."""

    def __init__(
        self,
        freezer: Freezer,
        forwarder: Forwarder | None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.freezer = freezer
        self.forwarder = forwarder
        self.stopping = stopping

    def handle(self, parsed: Parsed) -> list[bytes]:
        """The replies to one value from the host; never raises (one request cannot stop the agent)."""
        try:
            return self._handle(parsed)
        except Exception as err:  # e.g. an id nested too deep to encode again
            return [reply_error(QgaError(f"the request could not be handled: {type(err).__name__}: {err}"))]

    def _handle(self, parsed: Parsed) -> list[bytes]:
        if parsed.error is not None:
            return [reply_error(QgaError(parsed.error))]
        try:
            request = parse_request(parsed.value)
        except BadRequest as err:
            return [reply_error(err, err.ident)]
        try:
            if request.name in OWN_COMMANDS:
                return [self._own(request)]
            return self._forward(request)
        except QgaError as err:
            return [reply_error(err, request_ident(request))]

    def _own(self, request: Request) -> bytes:
        name = request.name
        if self.freezer.frozen and name not in FROZEN_ALLOWLIST:
            raise disabled_while_frozen(name)
        args = check_arguments(request.arguments, OWN_COMMANDS[name])
        if name in ("guest-sync", "guest-sync-delimited"):
            return reply_ok(args["id"], request, delimited=name == "guest-sync-delimited")
        if name == "guest-ping":
            return reply_ok({}, request)
        if name == "guest-info":
            return reply_ok(self.info(), request)
        if name == "guest-fsfreeze-status":
            return reply_ok(self.freezer.status(), request)
        if name == "guest-fsfreeze-thaw":
            return reply_ok(self.freezer.thaw(), request)
        mountpoints = args.get("mountpoints") if name == "guest-fsfreeze-freeze-list" else None
        return reply_ok(self.freezer.freeze(mountpoints, self.stopping), request)  # type: ignore[arg-type]

    def _forward(self, request: Request) -> list[bytes]:
        fwd = self.forwarder
        if fwd is None:
            # While frozen qemu-ga refuses every command it has as "disabled", before anything else.
            frozen_known = self.freezer.frozen and request.name in QEMU_GA_COMMANDS
            raise disabled_while_frozen(request.name) if frozen_known else not_found(request.name)
        if self.freezer.frozen:
            # Never talk to the other agent while frozen: refuse as qemu-ga would.
            raise disabled_while_frozen(request.name) if fwd.knows(request.name) else not_found(request.name)
        return fwd.call(request)

    def info(self) -> dict[str, Any]:
        """``guest-info``: the forwarded agent's commands with quiesce's own in their place.

        Without an agent to forward to, quiesce's own commands alone, in qemu-ga's order, and
        quiesce's version: a command that would only be "not found" is not advertised.
        """
        fwd = self.forwarder
        base: dict[str, Any] | None = None
        if fwd is not None:
            # While frozen, the last list seen; the other agent is not asked then.
            base = fwd.info if self.freezer.frozen else (fwd.refresh() or fwd.info)
        frozen = self.freezer.frozen
        commands: list[dict[str, Any]] = []
        seen = set()
        for cmd in (base or {}).get("supported_commands", []):
            name = cmd.get("name")
            entry = dict(cmd)
            if name in OWN_COMMANDS:
                entry["enabled"] = not frozen or name in FROZEN_ALLOWLIST
                entry["success-response"] = True
                seen.add(name)
            elif frozen and name not in FROZEN_ALLOWLIST:
                entry["enabled"] = False
            commands.append(entry)
        for name in OWN_COMMANDS:
            if name not in seen:
                enabled = not frozen or name in FROZEN_ALLOWLIST
                commands.append({"enabled": enabled, "name": name, "success-response": True})
        version = (base or {}).get("version") or quiesce_version()
        return {"version": version, "supported_commands": commands}
