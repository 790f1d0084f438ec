"""Build the small Debian guest for the real-guest run: rootfs, quiesce installed, agent units, disks.

Needs root, network access to a Debian mirror, ``debootstrap``, ``e2fsprogs``
(``mkfs.ext4 -d`` fills an image from a directory, nothing is mounted on the
host), and this checkout's virtualenv (to build the quiesce wheel). Takes a
few minutes, mostly downloads. Everything lands in the work directory.

What the guest gets:

- Debian bookworm, minbase, with its kernel, systemd, udev (which loads
  ``virtio_console`` for the agent port), python3 and ``qemu-guest-agent``;
- quiesce (wheel built from this checkout, with cffi) in
  ``/usr/local/lib/python3.11/dist-packages`` and ``/usr/local/bin/quiesce``;
- ``quiesce-qga.service`` and ``quiesce-qga-forward.service`` from
  ``systemd/``, enabled as README.md says, ``qemu-guest-agent.service``
  masked;
- a quiesce config with a pre- and a post-script (they log to
  ``/run/quiesce-vm/events``) and a 10 s freeze deadline, an
  ``fsfreeze-hook.d`` script for qemu-ga's hook, and a second disk mounted on
  ``/data`` for the writer.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIRROR = "http://deb.debian.org/debian"
PACKAGES = "linux-image-amd64,systemd-sysv,udev,kmod,python3,qemu-guest-agent,e2fsprogs,procps"
SITE = "usr/local/lib/python3.11/dist-packages"

PRE = """#!/bin/sh
mkdir -p /run/quiesce-vm && echo "pre $(date +%s.%N)" >> /run/quiesce-vm/events
"""
POST = """#!/bin/sh
echo "post $(date +%s.%N) snapshot=$QUIESCE_SNAPSHOT" >> /run/quiesce-vm/events
"""
FSFREEZE_D = """#!/bin/sh
echo "fsfreeze-hook.d/50-vm called with $1"
"""


def run(*argv: str, **kw: object) -> None:
    """Run a command, echoing it; fail loudly."""
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file in the guest's tree with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def debootstrap(root: Path) -> None:
    """Bookworm minbase with the kernel, in a private mount namespace (its /proc mount stays there)."""
    if (root / "etc/debian_version").exists() and glob.glob(str(root / "boot/vmlinuz-*")):
        print(f"{root}: already bootstrapped")
        return
    run(
        "unshare", "--mount", "--propagation", "private",
        "debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(root), MIRROR,
    )  # fmt: skip


def install_quiesce(root: Path, wheels: Path) -> None:
    """The wheel of this checkout and cffi's, unpacked into the guest's dist-packages."""
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    py = str(REPO / ".venv/bin/python")
    run(py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO))
    run(
        py, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "cffi>=1.16", "-d", str(wheels)
    )
    target = root / SITE
    shutil.rmtree(target / "quiesce", ignore_errors=True)
    run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--upgrade", "--target", str(target),
        *map(str, sorted(wheels.glob("*.whl"))))  # fmt: skip
    write(root / "usr/local/bin/quiesce", "#!/usr/bin/python3\nimport sys\nfrom quiesce.cli import main\n"
          "sys.exit(main())\n", 0o755)  # fmt: skip


def configure(root: Path) -> None:
    """fstab, hostname, the agent units (quiesce's enabled, qemu-ga's masked), config, hooks."""
    write(root / "etc/fstab", "/dev/vda / ext4 defaults 0 1\n/dev/vdb /data ext4 defaults 0 2\n")
    write(root / "etc/hostname", "quiesce-vm\n")
    (root / "data").mkdir(exist_ok=True)
    units = root / "etc/systemd/system"
    for name in ("quiesce-qga.service", "quiesce-qga-forward.service"):
        shutil.copy(REPO / "systemd" / name, units / name)
    # Switching to quiesce, as README.md says: mask qemu-ga's unit, enable ours.
    mask = units / "qemu-guest-agent.service"
    if mask.is_symlink() or mask.exists():
        mask.unlink()
    mask.symlink_to("/dev/null")
    wants = units / "dev-virtio\\x2dports-org.qemu.guest_agent.0.device.wants"
    wants.mkdir(exist_ok=True)
    link = wants / "quiesce-qga.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/quiesce-qga.service")
    # No login prompt needed; keep the boot short.
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer"):
        target = units / unit
        if not target.is_symlink():
            target.symlink_to("/dev/null")
    write(root / "etc/azure/pre.sh", PRE, 0o700)
    write(root / "etc/azure/post.sh", POST, 0o700)
    config = {
        "pluginName": "ScriptRunner",
        "preScriptLocation": "/etc/azure/pre.sh",
        "postScriptLocation": "/etc/azure/post.sh",
        "preScriptParams": [],
        "postScriptParams": [],
        "timeoutInSeconds": 30,
        "continueBackupOnFailure": True,
        "fsFreezeEnabled": True,
        "quiesce": {"freezeTimeoutSeconds": 10},
    }
    write(root / "etc/azure/VMSnapshotScriptPluginConfig.json", json.dumps(config, indent=1) + "\n", 0o600)
    (root / "etc/azure").chmod(0o755)
    write(root / "etc/qemu/fsfreeze-hook.d/50-vm", FSFREEZE_D, 0o755)


def images(root: Path, work: Path) -> None:
    """root.img (filled from the tree by mkfs.ext4 -d), data.img, and the kernel and initrd."""
    kernel = sorted(glob.glob(str(root / "boot/vmlinuz-*")))[-1]
    initrd = sorted(glob.glob(str(root / "boot/initrd.img-*")))[-1]
    shutil.copy(kernel, work / "vmlinuz")
    shutil.copy(initrd, work / "initrd.img")
    for name in ("root.img", "data.img"):
        (work / name).unlink(missing_ok=True)
    run("mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(work / "root.img"), "3G")
    run("mkfs.ext4", "-q", "-F", "-L", "data", str(work / "data.img"), "512M")


def build(work: Path) -> None:
    """Everything, idempotent: a second build reuses the bootstrap and refreshes quiesce."""
    if os.geteuid() != 0:
        sys.exit("build the guest as root")
    work.mkdir(parents=True, exist_ok=True)
    root = work / "rootfs"
    debootstrap(root)
    install_quiesce(root, work / "wheels")
    configure(root)
    images(root, work)
    print(f"guest ready in {work}")


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/quiesce-vm"))
