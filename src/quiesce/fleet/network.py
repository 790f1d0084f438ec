"""The lab's network: namespaces on one bridge, built with pyroute2, all named by one prefix.

A hub namespace holds a bridge with the first address of 10.213.K.0/24 (K
chosen per lab); every other namespace joins it through a veth pair whose
outer end is a port of the bridge. Nothing is added to the machine's own
namespace, and nothing routes out of the bridge. Cutting a namespace off is
setting its outer veth end down (there is no netem on these kernels).
"""

from __future__ import annotations

import contextlib
import secrets
import time


class Network:
    """Namespaces named ``<prefix>-<tag>`` on the bridge ``<prefix>-br`` in ``<prefix>-hub``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.octet = secrets.randbelow(250) + 1
        self.hub = f"{prefix}-hub"
        self.bridge = f"{prefix}-br"
        self._made: list[str] = []

    def address(self, host: int) -> str:
        """10.213.K.host."""
        return f"10.213.{self.octet}.{host}"

    def _new_ns(self, name: str) -> None:
        from pyroute2 import IPRoute, netns

        netns.create(name)
        self._made.append(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def build_hub(self) -> None:
        """The hub namespace and its bridge, with address .1."""
        from pyroute2 import IPRoute

        self._new_ns(self.hub)
        with IPRoute(netns=self.hub) as ipr:
            ipr.link("add", ifname=self.bridge, kind="bridge")
            br = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.addr("add", index=br, address=self.address(1), prefixlen=24)
            ipr.link("set", index=br, state="up")

    def join(self, tag: str, host: int) -> str:
        """A new namespace ``<prefix>-<tag>`` on the bridge with address .host; returns its name."""
        from pyroute2 import IPRoute

        ns = f"{self.prefix}-{tag}"
        self._new_ns(ns)
        outer, inner = f"{self.prefix}-h{tag}", f"{self.prefix}-v{tag}"
        with IPRoute(netns=self.hub) as ipr:
            ipr.link("add", ifname=outer, kind="veth", peer={"ifname": inner, "net_ns_fd": ns})
            br = ipr.link_lookup(ifname=self.bridge)[0]
            ipr.link("set", index=_lookup(ipr, outer), master=br, state="up")
        with IPRoute(netns=ns) as ipr:
            idx = _lookup(ipr, inner)
            ipr.addr("add", index=idx, address=self.address(host), prefixlen=24)
            ipr.link("set", index=idx, state="up")
        return ns

    def set_link(self, tag: str, up: bool) -> None:
        """Cut the namespace ``tag`` off the bridge, or join it again."""
        from pyroute2 import IPRoute

        with IPRoute(netns=self.hub) as ipr:
            idx = _lookup(ipr, f"{self.prefix}-h{tag}")
            ipr.link("set", index=idx, state="up" if up else "down")

    def remove(self) -> None:
        """Delete every namespace made (their veths and the bridge go with them)."""
        if not self._made:
            return
        from pyroute2 import netns

        for name in reversed(self._made):
            with contextlib.suppress(OSError):
                netns.remove(name)
        self._made.clear()


def _lookup(ipr: object, name: str) -> int:
    """An interface's index; a just-created veth end can take a moment to show in its namespace."""
    for _ in range(100):
        found = ipr.link_lookup(ifname=name)  # type: ignore[attr-defined]
        if found:
            return int(found[0])
        time.sleep(0.02)
    raise OSError(f"interface {name} did not appear")
