"""``quiesce qga``: the QEMU guest agent protocol, served with quiesce's engine.

Every KVM platform (libvirt, Proxmox, OpenStack, KubeVirt) freezes a guest
through the guest agent's ``guest-fsfreeze-*`` commands on the virtio-serial
port ``org.qemu.guest_agent.0``. ``quiesce qga`` owns that port: it serves
the handshake, ``guest-info`` and the fsfreeze commands itself, with qemu-ga
7.2's request and reply shapes and error classes, and forwards every other
command to a stock qemu-ga listening on a unix socket.

Modules: :mod:`~quiesce.qga.jsonstream` (the wire format),
:mod:`~quiesce.qga.protocol` (requests, replies, errors),
:mod:`~quiesce.qga.commands` (routing), :mod:`~quiesce.qga.freezer` and
:mod:`~quiesce.qga.window` (the freeze, on the public ``quiesce`` API),
:mod:`~quiesce.qga.fshook` (qemu-ga's fsfreeze hook), :mod:`~quiesce.qga.forward`
(the stock agent), :mod:`~quiesce.qga.server` (the port or socket),
:mod:`~quiesce.qga.command` (the command line).
"""
