"""``quiesce qga``: its arguments and its start-up; the serving is in :mod:`quiesce.qga.server`."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

import quiesce
from quiesce.cli.argtypes import MAX_SECONDS, seconds
from quiesce.qga.fshook import DEFAULT_HOOK, DEFAULT_HOOK_TIMEOUT_S

if TYPE_CHECKING:
    from quiesce.qga.events import EventLog
    from quiesce.qga.freezer import FreezerSettings

DEFAULT_DEVICE = "/dev/virtio-ports/org.qemu.guest_agent.0"
#: --timeout and --hook-timeout: more than 0, at most an hour (a usage error otherwise).
_positive_seconds = seconds(0, MAX_SECONDS, low_open=True)

DESCRIPTION = """\
Speak the QEMU guest agent protocol on the virtio-serial port (or a unix
socket), so that libvirt (virsh domfsfreeze, snapshot-create --quiesce),
Proxmox, OpenStack and KubeVirt freeze this machine through quiesce: with a
deadline (the guardian thaws at --timeout if the host never sends the thaw,
and the late thaw is then an error), the node's quiesce config around the
freeze (pre/post scripts, hook directory, session hooks), qemu-ga's
fsfreeze-hook bounded by --hook-timeout, and only what quiesce froze thawed.
guest-sync, guest-ping, guest-info and the guest-fsfreeze-* commands are
served here; every other command is forwarded to a stock qemu-ga running
with -m unix-listen (--forward), and refused while frozen as qemu-ga does.
Stop with SIGTERM: a freeze in progress is released (post steps run).
"""


def add_parser(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """Register ``qga`` on the subcommands ``sub``; ``common`` supplies --run-dir."""
    defaults = quiesce.RunOptions()
    p = sub.add_parser(
        "qga",
        parents=[common],
        help="serve the QEMU guest agent protocol (libvirt, Proxmox, OpenStack, KubeVirt) with quiesce",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--device",
        metavar="PATH",
        help=f"the virtio-serial port's character device (default {DEFAULT_DEVICE})",
    )
    where.add_argument(
        "--unix-listen", metavar="PATH", help="listen on a unix socket instead (one client at a time)"
    )
    p.add_argument(
        "--forward",
        metavar="unix:PATH",
        help="forward every other command to a stock qemu-ga listening there "
        "(qemu-ga -m unix-listen -p PATH); "
        "without it they are 'not found'",
    )
    p.add_argument(
        "--config",
        metavar="PATH",
        help=f"the node's quiesce config (default {defaults.config_path}, if it exists; without one, "
        "every freezable filesystem and no scripts)",
    )
    p.add_argument("--no-config", action="store_true", help="use no config, even if the default exists")
    p.add_argument(
        "--pluginhost", default=defaults.pluginhost_path, metavar="PATH", help="Azure's plugin host INI"
    )
    p.add_argument("--no-pluginhost", action="store_true", help="ignore the plugin host INI")
    p.add_argument(
        "--vmbackup-conf",
        default=defaults.vmbackup_conf,
        metavar="PATH",
        help="Azure's vmbackup.conf (MountsToSkip)",
    )
    p.add_argument("--no-vmbackup-conf", action="store_true", help="ignore vmbackup.conf")
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help="longest time frozen: the guardian thaws at this deadline if no thaw came, and the late thaw "
        "is an error (default: the config's freezeTimeoutSeconds, else 60)",
    )
    p.add_argument(
        "-F",
        "--fsfreeze-hook",
        nargs="?",
        const=DEFAULT_HOOK,
        metavar="PATH",
        help=f"qemu-ga's hook, run with 'freeze' before every freeze and 'thaw' after every thaw; "
        f"as in qemu-ga, -F alone names {DEFAULT_HOOK}, and a named hook that is missing fails "
        f"the freeze (default {DEFAULT_HOOK}, if it exists)",
    )
    p.add_argument("--no-fsfreeze-hook", action="store_true", help="run no fsfreeze hook")
    p.add_argument(
        "--hook-timeout",
        type=_positive_seconds,
        default=DEFAULT_HOOK_TIMEOUT_S,
        metavar="S",
        help=f"the fsfreeze hook's limit per call; then SIGTERM, 5 s, SIGKILL "
        f"(default {DEFAULT_HOOK_TIMEOUT_S:g})",
    )
    p.set_defaults(func=cmd_qga)


def cmd_qga(args: argparse.Namespace) -> int:
    """``quiesce qga``: serve until SIGTERM; 0 then, 1 if the channel cannot be opened."""
    from quiesce.qga.commands import Dispatcher
    from quiesce.qga.events import EventLog
    from quiesce.qga.forward import Forwarder
    from quiesce.qga.freezer import Freezer, FreezerSettings
    from quiesce.qga.fshook import FsfreezeHook
    from quiesce.qga.server import Stopper, serve_device, serve_unix

    if args.forward is not None and not args.forward.startswith("unix:"):
        raise ValueError(f"--forward takes unix:PATH, not {args.forward!r}")
    log = EventLog(sys.stderr)
    hook = None
    if not args.no_fsfreeze_hook:
        hook = FsfreezeHook(
            args.fsfreeze_hook or DEFAULT_HOOK,
            required=args.fsfreeze_hook is not None,
            timeout_s=args.hook_timeout,
        )
    settings = FreezerSettings(
        config_path=None if args.no_config else (args.config or quiesce.RunOptions().config_path),
        config_required=args.config is not None and not args.no_config,
        timeout_s=args.timeout,
        run_dir=args.run_dir,
        pluginhost_path=None if args.no_pluginhost else args.pluginhost,
        vmbackup_conf=None if args.no_vmbackup_conf else args.vmbackup_conf,
        hook=hook,
    )
    freezer = Freezer(settings, log)
    _check_config(settings, log)
    forwarder = Forwarder(args.forward[len("unix:") :]) if args.forward else None
    stop = Stopper()
    try:
        dispatcher = Dispatcher(freezer, forwarder, stop)
        try:
            if args.unix_listen:
                serve_unix(args.unix_listen, dispatcher, stop, log, _notify_ready)
            else:
                device = args.device or DEFAULT_DEVICE
                _notify_ready()
                serve_device(device, dispatcher, stop, log)
        except OSError as err:
            log(f"cannot serve: {err}")
            return 1
        finally:
            freezer.shutdown()
            if forwarder is not None:
                forwarder.close()
    finally:
        stop.close()
    log(f"stopped by signal {stop.signum}" if stop.signum else "stopped")
    return 0


def _check_config(settings: FreezerSettings, log: EventLog) -> None:
    """Say at start-up whether the node's config will be used (it is read again at each freeze)."""
    path = settings.config_path
    if path is None or (not settings.config_required and not os.path.lexists(path)):
        log(f"no quiesce config ({path or 'none'}): freezes run no scripts")
        return
    try:
        quiesce.load_config(path)
    except quiesce.QuiesceError as err:
        log(f"warning: the quiesce config {path} is not usable, freezes will fail until it is fixed: {err}")
    else:
        log(f"quiesce config: {path}")


def _notify_ready() -> None:
    """Tell systemd (Type=notify) that the channel is open."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return
    addr = "\0" + where[1:] if where.startswith("@") else where
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    with sock, contextlib.suppress(OSError):
        sock.sendto(b"READY=1", addr)
