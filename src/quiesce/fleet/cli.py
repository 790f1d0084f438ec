"""The fleet's commands: ``quiesce agent`` and ``quiesce fleet run|status|demo``.

``add_parsers`` is the one call ``quiesce.cli.build_parser`` makes. The
commands return exit codes; errors are raised and mapped to codes by
``quiesce.cli`` (the only place that does). etcd3gw is imported only when a
command runs, so the base install works without the ``fleet`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
from typing import Any

from quiesce import APPLICATION, CRASH, FILESYSTEM
from quiesce.cli.argtypes import MAX_SECONDS, count, seconds
from quiesce.fleet import FleetError
from quiesce.fleet.protocol import KEEP_RUNS, MAX_MEMBERS, check_members

#: Exit codes as ``quiesce run``'s.
EXIT_OK, EXIT_DEGRADED, EXIT_FAILED, EXIT_CONFIG = 0, 8, 9, 10

#: The numeric options' ranges (a value outside is a usage error, exit 2).
_seconds = seconds(0, MAX_SECONDS, low_open=True)
_ttl = count(1, 3600, "seconds")
_nodes = count(1, MAX_MEMBERS, "agents")


def _members(text: str) -> tuple[str, ...]:
    """``--members A,B,C``: node names, each once; an empty list or name is a usage error, not "all"."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError("names no node (leave --members out to take every registered agent)")
    try:
        return check_members(names, repr(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


#: The most of a password file read: a password is short.
PASSWORD_MAX_BYTES = 4096


def _security(args: argparse.Namespace) -> Any:
    """The TLS files and the password, each file checked (:mod:`quiesce.fleet.credentials`)."""
    from quiesce.fleet.credentials import CredentialFileError, checked
    from quiesce.fleet.store import Security

    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together: give both or neither")
    cacert = args.cacert and checked("--cacert", args.cacert, secret=False)
    cert = args.cert and checked("--cert", args.cert, secret=False)
    key = args.key and checked("--key", args.key, secret=True)
    password = os.environ.get("QUIESCE_ETCD_PASSWORD")
    if args.password_file:
        path = checked("--password-file", args.password_file, secret=True)
        try:
            with open(path, "rb") as f:
                raw = f.read(PASSWORD_MAX_BYTES + 1)
            if len(raw) > PASSWORD_MAX_BYTES:
                raise ValueError(f"longer than {PASSWORD_MAX_BYTES} bytes")
            password = raw.decode("utf-8").strip()
        except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
            raise CredentialFileError(f"--password-file {path} cannot be read: {err}") from err
    if args.user and password is None:
        raise FleetError("--user needs a password: --password-file or $QUIESCE_ETCD_PASSWORD")
    return Security(cacert, cert, key, args.user, password)


def _endpoints(text: str) -> tuple[str, ...]:
    """``--etcd URL[,URL...]``: an empty entry is an error, as a mistyped list should be."""
    urls = tuple(url.strip() for url in text.split(","))
    if not any(urls):
        raise ValueError("no etcd endpoint given")
    if "" in urls:
        raise ValueError(f"an empty etcd endpoint in {text!r}")
    return urls


def _store(args: argparse.Namespace) -> Any:
    from quiesce.fleet.store import Store

    try:
        return Store(_endpoints(args.etcd), _security(args))
    except ImportError as err:
        raise FleetError(f"the fleet needs the extra: pip install 'quiesce[fleet]' ({err})") from err


def exit_for(consistency: str) -> int:
    """0 application-consistent, 8 weaker, 9 failed (as ``quiesce run``)."""
    if consistency == APPLICATION:
        return EXIT_OK
    if consistency in (FILESYSTEM, CRASH):
        return EXIT_DEGRADED
    return EXIT_FAILED


def cmd_agent(args: argparse.Namespace) -> int:
    """``quiesce agent``."""
    from quiesce.fleet.agent import Agent, AgentOptions
    from quiesce.fleet.status import shown

    def log(line: str) -> None:
        if args.json:
            print(json.dumps({"agent": args.name, "event": line}), file=sys.stderr, flush=True)
        else:  # a line may quote etcd's values (an abort's reason): one line, no control characters
            print(f"quiesce-agent {args.name}: {shown(line, 2000)}", file=sys.stderr, flush=True)

    options = AgentOptions(
        endpoints=_endpoints(args.etcd),
        group=args.group,
        node=args.name,
        config_path=args.config,
        run_dir=args.run_dir,
        pluginhost_path=None if args.no_pluginhost else args.pluginhost,
        vmbackup_conf=None if args.no_vmbackup_conf else args.vmbackup_conf,
        ttl_s=args.ttl,
        security=_security(args),
    )
    stop = threading.Event()
    try:
        agent = Agent(options, log)
    except ImportError as err:
        raise FleetError(f"the fleet needs the extra: pip install 'quiesce[fleet]' ({err})") from err

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        agent.stopping.set()  # a run in progress thaws now, runs its post steps, reports

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        agent.serve(stop, max_runs=args.max_runs)
    finally:
        agent.close()
    log("stopped")
    return 0


def cmd_fleet_run(args: argparse.Namespace) -> int:
    """``quiesce fleet run``."""
    from quiesce.fleet.coordinator import FleetOptions, fleet_run
    from quiesce.fleet.status import print_result, shown

    if args.members and args.expect is not None:
        raise ValueError("give --members or --expect, not both")
    opts = FleetOptions(
        members=args.members or (),
        expect=args.expect,
        timeout_s=args.timeout,
        deadline_s=args.deadline,
    )
    say = None if args.json else (lambda line: print(shown(line, 2000), file=sys.stderr, flush=True))

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the run writes abort and revokes its lease on the way out

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with _store(args) as store:
            result = fleet_run(store, args.group, opts, say)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        print_result(result, sys.stdout)
    return EXIT_CONFIG if result.verdict.config_error else exit_for(result.verdict.consistency)


def cmd_fleet_status(args: argparse.Namespace) -> int:
    """``quiesce fleet status``."""
    from quiesce.fleet.status import group_status, print_status

    with _store(args) as store:
        status = group_status(store, args.group, args.last)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print_status(status, sys.stdout)
    return 0


def cmd_fleet_demo(args: argparse.Namespace) -> int:
    """``quiesce fleet demo``."""
    from quiesce.fleet.demo import print_demo, run_demo
    from quiesce.supervise.launch import SCRIPT_PATH

    # The lab runs etcd, ip, nsenter, mount... as root: found on a fixed PATH, not the caller's.
    os.environ["PATH"] = SCRIPT_PATH
    outcome = run_demo(agents=args.agents, deadline_s=args.deadline)
    if args.json:
        print(json.dumps(outcome, indent=2, sort_keys=True))
    else:
        print_demo(outcome, sys.stdout)
    return 0 if outcome["cut_consistent"] and outcome["verdict"] == APPLICATION else 1


def _etcd_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--etcd", required=True, metavar="URL[,URL...]", help="etcd endpoints (http(s)://HOST:PORT)"
    )
    p.add_argument("--group", required=True, help="the fleet group (its keys live under /quiesce/GROUP/)")
    p.add_argument(
        "--cacert",
        metavar="PATH",
        help="CA certificate to verify etcd (TLS); as root: owned by root, writable by nobody else",
    )
    p.add_argument("--cert", metavar="PATH", help="client certificate (TLS; with --key), as --cacert")
    p.add_argument(
        "--key", metavar="PATH", help="client key (TLS; with --cert); as root: owned by root, mode 600"
    )
    p.add_argument("--user", help="etcd user (password from --password-file or $QUIESCE_ETCD_PASSWORD)")
    p.add_argument(
        "--password-file",
        metavar="PATH",
        help="file holding the etcd user's password; as root: owned by root, mode 600",
    )


FLEET_EXIT_HELP = """exit status:
  0  the fleet's snapshots are one application-consistent cut
  1  error (etcd unreachable or refused, members not registered)
  8  every node took a snapshot, but the fleet is only file-system- or crash-consistent
  9  the fleet run failed (no cut, or a node's snapshot failed)
 10  a node's configuration is invalid (see its part)
"""


def add_parsers(sub: Any, common: argparse.ArgumentParser, config_files: argparse.ArgumentParser) -> None:
    """Register ``agent`` and ``fleet`` on ``quiesce``; the agent takes ``run``'s config file options."""
    p = sub.add_parser(
        "agent",
        parents=[common, config_files],
        help="serve fleet runs on this node (long-running; needs quiesce[fleet])",
        description="Register this node in a fleet group on etcd and serve fleet runs with the "
        "node's own Azure config: its scripts, hooks, targets and snapshot command. Each run is "
        "the single-node run with a barrier before the freeze and inside the window; the node's "
        "own guardian deadline always bounds the freeze.",
    )
    _etcd_options(p)
    p.add_argument(
        "--name", default=socket.gethostname().split(".")[0], help="this node's name (default: hostname)"
    )
    p.add_argument(
        "--ttl", type=_ttl, default=5, metavar="S", help="registration lease TTL, 1 to 3600 (default 5)"
    )
    p.add_argument("--max-runs", type=count(1, 1_000_000), default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_agent)

    fleet = sub.add_parser(
        "fleet",
        help="one consistent cut across many machines (run, status, demo)",
        description="Coordinate application-consistent snapshots across the agents of a group.",
    )
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    p = fsub.add_parser(
        "run",
        parents=[common],
        help="coordinate one fleet run",
        description="Create a run for the group's members, freeze them all, commit the cut, let "
        "every node take its snapshot, thaw, and judge the result from etcd revisions.",
        epilog=FLEET_EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _etcd_options(p)
    p.add_argument("--members", type=_members, metavar="A,B,C", help="the nodes that must take part")
    p.add_argument("--expect", type=_nodes, metavar="N", help="take the N registered agents (waits for them)")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="longest wait for the members' pre steps, and for their post steps (default 60)",
    )
    p.add_argument(
        "--deadline",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="caps each node's freeze deadline, its guardian's (default 10)",
    )
    p.set_defaults(func=cmd_fleet_run)

    p = fsub.add_parser("status", parents=[common], help="members, their health, the last runs")
    _etcd_options(p)
    p.add_argument(
        "--last",
        type=count(0, KEEP_RUNS),
        default=5,
        metavar="N",
        help=f"how many runs to show, 0 to {KEEP_RUNS} (a group keeps the last {KEEP_RUNS}; default 5)",
    )
    p.set_defaults(func=cmd_fleet_status)

    p = fsub.add_parser(
        "demo",
        parents=[common],
        help="a whole fleet on this machine: etcd, agents in namespaces, a cut, restored and checked",
        description="Start etcd (from PATH) and N agents, each in its own network and mount "
        "namespace with its own loop filesystem, run a distributed writer across them, take one "
        "fleet cut, restore every node's snapshot and check that they form a consistent cut. "
        "Needs root, etcd-server, xfsprogs, e2fsprogs and quiesce[fleet].",
    )
    p.add_argument(
        "--agents", type=count(1, 32), default=3, metavar="N", help="how many agents, 1 to 32 (default 3)"
    )
    p.add_argument(
        "--deadline", type=_seconds, default=5.0, metavar="S", help="each node's freeze deadline (default 5)"
    )
    p.set_defaults(func=cmd_fleet_demo)
