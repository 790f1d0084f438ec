"""A lab node's own world: run inside its network namespace and a new private mount namespace.

``python -m quiesce.fleet.nodehost DEVICE FSTYPE MOUNTPOINT`` mounts the
node's loop device (visible only in this mount namespace, which the node's
agent then joins), serves the distributed writer's part from it, prints
``ready``, and waits for a line or EOF on stdin, or SIGTERM. Then it thaws
the filesystem if something left it frozen, unmounts, and exits.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence

from quiesce.cli.argtypes import count
from quiesce.fleet.writer import PORT, serve
from quiesce.sandbox import thaw_quietly


def main(argv: Sequence[str] | None = None) -> int:
    """Mount, serve, wait, thaw, unmount (see the module doc)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("device")
    p.add_argument("fstype")
    p.add_argument("mount_point")
    p.add_argument("--port", type=count(1, 65535), default=PORT)
    p.add_argument("--no-writer", action="store_true")
    args = p.parse_args(argv)
    subprocess.run(["mount", "-t", args.fstype, args.device, args.mount_point], check=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    server = None
    try:
        if not args.no_writer:
            server = serve(args.mount_point, args.port)
        print("ready", flush=True)

        def wait_stdin() -> None:
            sys.stdin.readline()
            done.set()

        threading.Thread(target=wait_stdin, daemon=True).start()
        done.wait()
    finally:
        thaw_quietly(args.mount_point)
        if server is not None:
            server.shutdown()
        subprocess.run(["umount", "-l", args.mount_point], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
