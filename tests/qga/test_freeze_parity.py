"""Freeze semantics against Debian's qemu-ga 7.2: counts, states, errors and the fsfreeze hook.

The same steps run against ``qemu-ga -m unix-listen -F HOOK`` (its plain
``guest-fsfreeze-freeze`` blocked) and against ``quiesce qga -F HOOK``
without a config, each on the same loop filesystems in this process's
private mount namespace: freeze-lists naming one mount point, several, the
same twice, a directory or a file inside a mount, a missing path, a bind
mount, nested mounts, a read-only filesystem, names with a space, a newline or a backslash, an
empty list; status and thaw in every state; a filesystem whose FIFREEZE
fails; hooks that fail on ``freeze`` or ``thaw`` or die. Every reply must
be the same bytes, and the hook must have been called with the same
arguments at the same points. Only freeze-lists of this sandbox's mount
points or of paths that are not mount points are ever sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quiesce.sandbox import Sandbox, thaw_quietly
from tests.qga.agents import QEMU_GA, Agent, Client, mkdir, qemu_ga, quiesce_qga

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.access(QEMU_GA, os.X_OK), reason="qemu-guest-agent is not installed"),
]

#: qemu-ga's whole-machine freeze must never run here: it would freeze "/".
STOCK_BLOCK = ("guest-fsfreeze-freeze",)

#: The hook: logs its argument, then fails as ``ctl`` says ("freeze 3", "thaw 4", "freeze kill").
HOOK = """#!/bin/sh
echo "$1" >> {log}
read when how < {ctl} || exit 0
[ "$when" = "$1" ] || exit 0
[ "$how" = kill ] && kill -9 $$
exit "$how"
"""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@dataclass
class Mounts:
    """The sandbox's mount points by role, and every filesystem's mount point (to thaw)."""

    paths: dict[str, str]
    thaw_order: list[str]

    def thaw_all(self) -> list[str]:
        """Thaw whatever is left frozen (backing filesystems first); the ones that were."""
        return [p for p in self.thaw_order if os.path.ismount(p) and thaw_quietly(p)]


@pytest.fixture(scope="module")
def mounts(private_ns: None) -> Iterator[Mounts]:
    """ext4 ``a``, ``b``, xfs ``c``; a bind of ``a``; a filesystem mounted inside ``a``; two
    filesystems moved to names with a space, and with a newline and a backslash; ``broken``, an
    ext4 shut down (its FIFREEZE fails with EIO); binds of ``sp`` at names with a tab and not
    ASCII; ``ro``, an ext4 remounted read-only. All in this
    process's mount namespace."""
    with Sandbox() as sb, contextlib.ExitStack() as undo:
        fs = {name: sb.add("ext4", name=name) for name in ("a", "b", "inner", "sp", "nl", "ro", "broken")}
        fs["c"] = sb.add("xfs", name="c")
        base = sb.base
        a = fs["a"].mount_point
        (a / "dir").mkdir()
        (a / "file").write_text("x")
        moved = {"inner": a / "inner", "sp": base / "with space", "nl": base / "new\nline\\back"}
        for name, where in moved.items():
            where.mkdir()
            _run("mount", "--move", str(fs[name].mount_point), str(where))
            undo.callback(_run, "mount", "--move", str(where), str(fs[name].mount_point))
        bind = base / "a-bind"
        binds = {"bind": (a, bind), "utf8": (moved["sp"], base / "ünï"), "tab": (moved["sp"], base / "t\tab")}
        for source, where in binds.values():
            where.mkdir()
            _run("mount", "--bind", str(source), str(where))
            undo.callback(_run, "umount", str(where))
        _run("mount", "-o", "remount,ro", str(fs["ro"].mount_point))
        _run("xfs_io", "-x", "-c", "shutdown", str(fs["broken"].mount_point))
        paths = {name: str(f.mount_point) for name, f in fs.items()}
        paths.update({name: str(where) for name, where in moved.items()})
        paths.update({name: str(where) for name, (_, where) in binds.items()})
        result = Mounts(paths, [paths[n] for n in ("a", "b", "c", "inner", "sp", "nl", "ro")])
        undo.callback(result.thaw_all)
        yield result


@pytest.fixture
def m(mounts: Mounts) -> Iterator[dict[str, str]]:
    """The mount points by role; fails the test if anything was left frozen."""
    yield mounts.paths
    left = mounts.thaw_all()
    assert not left, f"left frozen: {left}"


class Hook:
    """The logging hook, its log and its control file, in a root-only directory on /run."""

    def __init__(self, base: Path) -> None:
        self.log, self.ctl = base / "hook.log", base / "hook.ctl"
        self.path = base / "fsfreeze-hook"
        self.path.write_text(HOOK.format(log=self.log, ctl=self.ctl))
        self.path.chmod(0o755)

    def fail(self, how: str) -> None:
        """Make the next calls fail as ``how`` says ("" for never)."""
        self.ctl.write_text(how + "\n")

    def calls(self) -> list[str]:
        """The arguments of every call since the last time, in order."""
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        self.log.unlink()
        return lines


def freeze_list(names: list[str]) -> bytes:
    """A freeze-list request; only ever with an explicit list (empty is explicit: nothing)."""
    assert isinstance(names, list)
    return json.dumps({"execute": "guest-fsfreeze-freeze-list", "arguments": {"mountpoints": names}}).encode()


Step = tuple[str, bytes | str | Callable[[], object]]


def play(agent: Agent, hook: Hook, steps: list[Step]) -> list[tuple[str, bytes, list[str]]]:
    """Send each step (a request, or a :func:`fail`), keep each reply with the hook's calls."""
    out = []
    with agent.client() as c:
        for label, step in steps:
            if callable(step):
                step()  # something another tool does meanwhile
                continue
            if isinstance(step, str):
                hook.fail(step)
                continue
            send(c, step)
            out.append((label, c.line(), hook.calls()))
    return out


def send(c: Client, raw: bytes) -> None:
    """Send one request line; a freeze must be a freeze-list with its list given."""
    if b"guest-fsfreeze-freeze" in raw:
        obj = json.loads(raw)
        assert obj["execute"] == "guest-fsfreeze-freeze-list"
        assert isinstance(obj["arguments"]["mountpoints"], list), raw
    c.sock.sendall(raw + b"\n")


STATUS = b'{"execute":"guest-fsfreeze-status"}'
THAW = b'{"execute":"guest-fsfreeze-thaw"}'


def fail(how: str) -> tuple[str, str]:
    """A step that makes the hook fail as ``how`` says from now on ("" for never)."""
    return (f"hook: {how}", how)


def cycle(label: str, names: list[str]) -> list[tuple[str, bytes | str]]:
    """Freeze-list ``names``, status, thaw, status, thaw again."""
    return [
        (f"{label}: freeze", freeze_list(names)),
        (f"{label}: status", STATUS),
        (f"{label}: thaw", THAW),
        (f"{label}: status after", STATUS),
        (f"{label}: thaw again", THAW),
    ]


def both(node, m, steps, **quiesce_kwargs) -> tuple[list, list]:
    """The steps against qemu-ga, then against quiesce qga, each with a fresh hook log."""
    work = mkdir(Path(node.base) / "agents")
    hook = Hook(Path(node.base))
    hook.fail("")
    with qemu_ga(mkdir(work / "stock"), hook=str(hook.path), block=STOCK_BLOCK) as stock:
        try:
            want = play(stock, hook, steps)
        finally:
            for role, path in m.items():
                if role not in ("broken", "bind", "tab", "utf8"):
                    thaw_quietly(path)
    hook.fail("")
    hook.calls()
    with quiesce_qga(mkdir(work / "ours"), node.run_dir, hook_option=f"-F{hook.path}", **quiesce_kwargs) as q:
        have = play(q, hook, steps)
    return want, have


def test_freeze_list_counts_states_and_hook_calls_match_qemu_ga(node, m):
    """Each kind of list: the same count, status, thaw count and hook calls as qemu-ga's."""
    a = m["a"]
    steps = [
        ("thaw before any freeze", THAW),
        ("status before", STATUS),
        *cycle("one", [a]),
        *cycle("several", [a, m["b"], m["c"]]),
        *cycle("the same twice", [a, a]),
        *cycle("a directory in a mount", [a + "/dir"]),
        *cycle("a file in a mount", [a + "/file"]),
        *cycle("missing", ["/nonexistent-qga-parity"]),
        *cycle("trailing slash", [a + "/"]),
        *cycle("relative", ["a"]),
        *cycle("a bind mount alone", [m["bind"]]),
        *cycle("a bind mount and its source", [a, m["bind"]]),
        *cycle("nested", [a, m["inner"]]),
        *cycle("inner only", [m["inner"]]),
        *cycle("a space", [m["sp"]]),
        *cycle("a newline and a backslash", [m["nl"]]),
        *cycle("a tab, bound", [m["tab"]]),
        *cycle("not ASCII, bound", [m["utf8"]]),
        *cycle("empty list", []),
        ("frozen", freeze_list([a, m["b"]])),
        ("freeze-list while frozen", freeze_list([m["c"]])),
        ("status while frozen", STATUS),
        ("thaw", THAW),
    ]
    want, have = both(node, m, steps)
    assert have == want


def test_read_only_filesystem_is_frozen_and_counted_as_by_qemu_ga(node, m):
    """A read-only ext4: FIFREEZE succeeds on it, so qemu-ga counts it (and is frozen until the thaw)."""
    steps = [*cycle("read-only", [m["ro"]]), *cycle("read-only and writable", [m["ro"], m["b"]])]
    want, have = both(node, m, steps)
    assert [w[1] for w in want[:3]] == [b'{"return": 1}\n', b'{"return": "frozen"}\n', b'{"return": 1}\n']
    assert have == want


def test_failed_fifreeze_matches_qemu_ga(node, m):
    """A FIFREEZE that fails (EIO, a shut-down ext4): qemu-ga's error, nothing left frozen, the thaw
    hook called, then thawed state; also with a filesystem frozen before it."""
    steps = [
        *cycle("broken alone", [m["broken"]]),
        *cycle("broken after another", [m["a"], m["b"], m["broken"]]),
        ("afterwards", freeze_list([m["a"]])),
        ("thaw", THAW),
    ]
    want, have = both(node, m, steps)
    eio = b'{"error": {"class": "GenericError", "desc": "failed to freeze %s: Input/output error"}}\n'
    assert want[0][1] == eio % m["broken"].encode()
    assert have == want


def test_failing_hooks_match_qemu_ga(node, m):
    """A hook failing on freeze (no freeze, no thaw call), on thaw (thawed, the thaw's error, also
    with nothing frozen), killed: qemu-ga's replies and calls."""
    a = m["a"]
    steps = [
        fail("freeze 3"),
        *cycle("fails on freeze", [a]),
        *cycle("fails on freeze, nothing listed", ["/nonexistent-qga-parity"]),
        fail("thaw 4"),
        *cycle("fails on thaw", [a]),
        *cycle("fails on thaw, nothing frozen", ["/nonexistent-qga-parity"]),
        fail("freeze kill"),
        *cycle("killed on freeze", [a]),
        fail("thaw kill"),
        *cycle("killed on thaw", [a, m["c"]]),
        fail(""),
        *cycle("fine again", [a]),
    ]
    want, have = both(node, m, steps)
    assert have == want


@pytest.mark.parametrize(
    ("name", "make", "why"),
    [
        ("no-such-hook", None, "No such file or directory"),
        ("not-executable", 0o644, "Permission denied"),
        ("no-such-dir/hook", None, "No such file or directory"),
        ("a-file/hook", 0o755, "Not a directory"),
    ],
)
def test_hook_it_cannot_run_fails_every_freeze_and_thaw_as_in_qemu_ga(node, m, name, make, why):
    """``-F`` naming a hook that is missing, not executable or under a file: each freeze and each
    thaw fails with qemu-ga's "can't access" and the errno's words."""
    work = mkdir(Path(node.base) / "agents")
    path = Path(node.base) / name
    if make is not None:
        target = path.parent if name.startswith("a-file/") else path
        target.write_text("#!/bin/sh\nexit 0\n")
        target.chmod(make)
    steps = [*cycle("unusable hook", [m["a"]])]
    with qemu_ga(mkdir(work / "stock"), hook=str(path), block=STOCK_BLOCK) as stock:
        want = play(stock, Hook(Path(node.base)), steps)
    with quiesce_qga(mkdir(work / "ours"), node.run_dir, hook_option=f"-F{path}") as q:
        have = play(q, Hook(Path(node.base)), steps)
    desc = f"can't access fsfreeze hook '{path}': {why}"
    assert want[0][1] == json.dumps({"error": {"class": "GenericError", "desc": desc}}).encode() + b"\n"
    assert have == want


@pytest.mark.parametrize(
    "body",
    [
        b"#!/nonexistent/interpreter\nexit 0\n",
        b"echo no interpreter line\n",
        b"\x7fELF\x00garbage",
        b"#!/bin/sh\r\n",
    ],
    ids=["missing-interpreter", "no-hashbang", "not-a-program", "crlf"],
)
def test_hook_that_cannot_be_executed_fails_with_status_1_as_in_qemu_ga(node, m, body):
    """A hook whose exec fails (its interpreter missing, no ``#!``, not a program): qemu-ga's child
    exits 1, so the freeze and the thaw fail with "status 1"; nothing is frozen."""
    work = mkdir(Path(node.base) / "agents")
    path = Path(node.base) / "unexecutable-hook"
    path.write_bytes(body)
    path.chmod(0o755)
    steps = [*cycle("unexecutable hook", [m["a"]])]
    with qemu_ga(mkdir(work / "stock"), hook=str(path), block=STOCK_BLOCK) as stock:
        want = play(stock, Hook(Path(node.base)), steps)
    with quiesce_qga(mkdir(work / "ours"), node.run_dir, hook_option=f"-F{path}") as q:
        have = play(q, Hook(Path(node.base)), steps)
    assert (
        want[0][1]
        == b'{"error": {"class": "GenericError", "desc": "fsfreeze hook has failed with status 1"}}\n'
    )
    assert have == want


#: qemu-ga commands without side effects (never a shutdown, suspend, set-*, exec or trim here,
#: even though all are disabled while frozen); file commands get no arguments.
HARMLESS = (
    "guest-get-time", "guest-network-get-interfaces", "guest-get-vcpus", "guest-get-disks",
    "guest-get-fsinfo", "guest-get-memory-blocks", "guest-get-memory-block-info",
    "guest-exec-status", "guest-get-host-name", "guest-get-users", "guest-get-timezone",
    "guest-get-osinfo", "guest-get-devices", "guest-ssh-get-authorized-keys",
    "guest-get-diskstats", "guest-get-cpustats", "guest-file-close", "guest-file-read",
    "guest-file-seek", "guest-file-flush", "guest-nosuch",
)  # fmt: skip


def test_every_other_command_while_frozen_is_refused_as_by_qemu_ga(node, m):
    """While frozen, without an agent to forward to, a command qemu-ga has is "disabled" (not
    "not found"), as qemu-ga answers; an unknown one is "not found"."""
    steps = [
        ("freeze", freeze_list([m["a"]])),
        ("status", STATUS),
        *[(name, json.dumps({"execute": name}).encode()) for name in HARMLESS],
        ("thaw", THAW),
    ]
    want, have = both(node, m, steps)
    assert want[1][1] == b'{"return": "frozen"}\n'
    assert have == want


def test_another_tools_thaw_keeps_the_frozen_state_as_in_qemu_ga(node, m):
    """``fsfreeze -u`` of one of two frozen filesystems: still "frozen", other commands still refused,
    as in qemu-ga; the thaw thaws the other and calls the hook. Its reply differs on purpose:
    qemu-ga counts what it thawed (1), quiesce says the window was cut short (an error)."""
    a, b = m["a"], m["b"]
    steps = [
        ("freeze", freeze_list([a, b])),
        ("another tool thaws a", lambda: _run("fsfreeze", "-u", a)),
        ("status", STATUS),
        ("refused", b'{"execute":"guest-get-osinfo"}'),
        ("freeze-list refused", freeze_list([a])),
        ("thaw", THAW),
        ("status after", STATUS),
        ("thaw again", THAW),
    ]
    want, have = both(node, m, steps)
    assert want[4] == ("thaw", b'{"return": 1}\n', ["thaw"])
    error = json.loads(have[4][1])["error"]
    assert error["class"] == "GenericError"
    assert f"thawed by another tool during the window: {a}" in error["desc"]
    assert have[4][2] == ["thaw"]
    assert have[:4] + have[5:] == want[:4] + want[5:]
