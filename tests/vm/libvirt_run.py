"""The guest under Debian's libvirt: virsh domfsfreeze / domfsthaw / snapshot-create-as --quiesce.

libvirtd runs privately: in its own mount namespace, with its own
``/etc/libvirt`` (bind-mounted from the work directory: QEMU as root, no
cgroups, no per-VM namespaces, no virtlogd), its socket in the work
directory, and no network driver; it is stopped at the end. The domain is
transient (``virsh create``), with the guest's disks, the kernel built by
build.py, and the agent channel ``org.qemu.guest_agent.0`` that libvirt
itself connects to, plus a second port for :mod:`tests.vm.measure` (the
bare agents' windows, compared without libvirt in the way). Run as root
after build.py (and after run.py, or alone): ``python3
tests/vm/libvirt_run.py WORKDIR``; then ``tests/vm/report.py`` writes the
results into bench/RESULTS.md.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.vm.measure import bare_cycles

QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
namespaces = [ ]
cgroup_controllers = [ ]
security_driver = "none"
stdio_handler = "file"
"""

DOMAIN = """<domain type='qemu'>
  <name>quiesce-vm</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{work}/vmlinuz</kernel>
    <initrd>{work}/initrd.img</initrd>
    <cmdline>root=/dev/vda rw console=ttyS0</cmdline>
  </os>
  <cpu mode='maximum'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{work}/root.img'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{work}/data.img'/><target dev='vdb' bus='virtio'/>
    </disk>
    <channel type='unix'>
      <source mode='bind' path='{work}/libvirt/qga.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='{work}/libvirt/measure.sock'/>
      <target type='virtio' name='org.quiesce.measure.0'/>
    </channel>
    <serial type='file'><source path='{work}/libvirt/console.log'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Libvirt:
    """A private libvirtd and virsh against it."""

    #: State directories libvirtd makes on the host; those this run made are removed after.
    STATE_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")

    def __init__(self, work: Path) -> None:
        self.made = [d for d in self.STATE_DIRS if not Path(d).exists()]
        self.dir = work / "libvirt"
        shutil.rmtree(self.dir, ignore_errors=True)
        etc = self.dir / "etc"
        (self.dir / "sock").mkdir(parents=True)
        etc.mkdir()
        for name in ("libvirt.conf", "libvirt-admin.conf"):
            if Path("/etc/libvirt", name).exists():
                shutil.copy(Path("/etc/libvirt", name), etc / name)
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{self.dir}/sock"\nauth_unix_rw = "none"\n'
            f'log_outputs = "3:file:{self.dir}/libvirtd.log"\n'
        )
        # libvirt resolves its compiled-in QEMU user before reading qemu.conf: the
        # user exists in this namespace's /etc/passwd only, not on the host.
        for name, entry in (("passwd", "libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin"),
                            ("group", "libvirt-qemu:x:64055:")):  # fmt: skip
            (self.dir / name).write_text(Path("/etc", name).read_text() + entry + "\n")
        self.uri = f"qemu:///system?socket={self.dir}/sock/libvirt-sock"
        script = (
            f"mount --bind {etc} /etc/libvirt && mount --bind {self.dir}/passwd /etc/passwd && "
            f"mount --bind {self.dir}/group /etc/group && exec libvirtd -f {etc}/libvirtd.conf"
        )
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=open(self.dir / "libvirtd.out", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        for _ in range(100):
            if self.virsh("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("libvirtd did not come up: " + (self.dir / "libvirtd.out").read_text())

    def virsh(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``virsh -c URI args``."""
        done = subprocess.run(
            ["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
        return done

    def agent(self, dom: str, name: str, **arguments: object) -> dict:
        """A raw agent command through libvirt (``virsh qemu-agent-command``)."""
        req: dict[str, object] = {"execute": name}
        if arguments:
            req["arguments"] = arguments
        done = self.virsh("qemu-agent-command", dom, json.dumps(req), "--timeout", "60", check=False)
        if done.returncode != 0:
            return {"virsh-error": done.stderr.strip()}
        return json.loads(done.stdout)

    def stop(self) -> None:
        """Stop libvirtd (SIGTERM to the process this object started)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for d in self.made:
            shutil.rmtree(d, ignore_errors=True)


def guest_exec_start(lv: Libvirt, dom: str, path: str, *args: str) -> int:
    """Start a command in the guest through libvirt and the agent; its guest pid."""
    reply = lv.agent(dom, "guest-exec", path=path, arg=list(args), **{"capture-output": True})
    if "return" not in reply:
        raise RuntimeError(f"guest-exec {path}: {reply}")
    return int(reply["return"]["pid"])


def guest_exec_wait(lv: Libvirt, dom: str, pid: int, timeout: float = 120) -> str:
    """Wait for a guest-exec'd command; its stdout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        reply = lv.agent(dom, "guest-exec-status", pid=pid)
        if "return" not in reply:
            raise RuntimeError(f"guest-exec-status {pid}: {reply}")
        if reply["return"]["exited"]:
            return base64.b64decode(reply["return"].get("out-data", "")).decode(errors="replace")
        time.sleep(0.2)
    raise TimeoutError(f"guest pid {pid}")


def guest_exec(lv: Libvirt, dom: str, path: str, *args: str) -> str:
    """Run a command in the guest through libvirt and the agent; its stdout."""
    return guest_exec_wait(lv, dom, guest_exec_start(lv, dom, path, *args))


def main() -> int:
    """Boot under libvirt, freeze/thaw and snapshot with --quiesce, record results.json['libvirt']."""
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/quiesce-vm")
    results: dict = {"checks": {}}

    def check(cond: bool, what: str) -> None:
        results["checks"][what] = bool(cond)
        print(f"{'ok ' if cond else 'FAIL'} {what}", flush=True)

    lv = Libvirt(work)
    dom = "quiesce-vm"
    try:
        results["virsh_version"] = lv.virsh("version").stdout.strip().splitlines()
        xml = work / "libvirt" / "domain.xml"
        xml.write_text(DOMAIN.format(work=work))
        started = time.monotonic()
        lv.virsh("create", str(xml))
        while "return" not in lv.agent(dom, "guest-ping"):
            if time.monotonic() - started > 900:
                raise TimeoutError("the guest agent never answered through libvirt")
            time.sleep(3)
        results["boot_to_agent_s"] = round(time.monotonic() - started, 1)
        froze = lv.virsh("domfsfreeze", dom).stdout.strip()
        results["domfsfreeze"] = froze
        check(bool(re.search(r"Froze [2-9]\d* filesystem", froze)), "virsh domfsfreeze")
        check(
            lv.agent(dom, "guest-fsfreeze-status") == {"return": "frozen"},
            "status frozen (qemu-agent-command)",
        )
        thawed = lv.virsh("domfsthaw", dom).stdout.strip()
        results["domfsthaw"] = thawed
        check(bool(re.search(r"Thawed [2-9]\d* filesystem", thawed)), "virsh domfsthaw")
        one = lv.virsh("domfsfreeze", dom, "--mountpoint", "/data").stdout.strip()
        check("Froze 1 filesystem" in one, "virsh domfsfreeze --mountpoint /data")
        check("Thawed 1 filesystem" in lv.virsh("domfsthaw", dom).stdout, "virsh domfsthaw after it")
        before = guest_exec(lv, dom, "/bin/cat", "/run/quiesce-vm/events").count("pre ")
        snap = lv.virsh(
            "snapshot-create-as", dom, "s1", "--disk-only", "--quiesce", "--atomic", "--no-metadata",
            "--diskspec", f"vda,snapshot=external,file={work}/libvirt/root.s1.qcow2",
            "--diskspec", f"vdb,snapshot=external,file={work}/libvirt/data.s1.qcow2",
        )  # fmt: skip
        results["snapshot"] = snap.stdout.strip()
        check("created" in snap.stdout, "virsh snapshot-create-as --disk-only --quiesce")
        events = guest_exec(lv, dom, "/bin/cat", "/run/quiesce-vm/events")
        check(events.count("pre ") == before + 1, "the snapshot's freeze ran the guest's pre/post scripts")
        journal = guest_exec(lv, dom, "/bin/journalctl", "-u", "quiesce-qga", "-o", "cat", "--no-pager")
        results["windows_ms"] = [
            float(line.split()[3]) for line in journal.splitlines() if line.startswith("quiesce qga: window ")
        ]
        print("bare agents on the second port:", flush=True)
        results["bare"] = bare_cycles(lv, dom, work)
        lv.virsh("destroy", dom, check=False)
    except Exception as err:
        results["error"] = f"{type(err).__name__}: {err}"
        print(results["error"])
        lv.virsh("destroy", dom, check=False)
    finally:
        lv.stop()
        path = work / "results.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["libvirt"] = results
        path.write_text(json.dumps(data, indent=1) + "\n")
    failed = [k for k, v in results["checks"].items() if not v]
    print("FAILED: " + ", ".join(failed) if failed or "error" in results else "all libvirt checks passed")
    return 1 if failed or "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
