"""The channel to the host: the virtio-serial port, or a unix socket; one request at a time.

``--device`` opens the character device of the virtio-serial port
``org.qemu.guest_agent.0``. While no host process has the other end open,
the port reads end-of-file; as qemu-ga does, the agent then waits 100 ms
and looks again (the host sends 0xFF before ``guest-sync-delimited`` to
discard anything half-read). ``--unix-listen`` accepts one client at a time
and starts each with a fresh parser. Replies are written in order; a host
that stops reading for :data:`WRITE_TIMEOUT_S`, or hangs up, loses them
(the unix client is dropped), so a stuck host never stops the agent, and a
stop signal ends the wait at once (the freeze's release never waits for a
host that does not read).

Requests are handled one at a time, as qemu-ga does; the frozen window does
not depend on this loop: its deadline is the guardian's, and its wait is in
the window's own thread.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import signal
import socket
import stat
import time
from collections.abc import Callable

from quiesce.engine.trust import UnsafeDirectoryError, check_directory, resolve
from quiesce.qga.commands import Dispatcher
from quiesce.qga.events import EventLog
from quiesce.qga.jsonstream import JsonStream

#: What qemu-ga waits when the virtio port has no host behind it.
IDLE_RETRY_S = 0.1
WRITE_TIMEOUT_S = 30.0
READ_CHUNK = 1 << 16


class Stopper:
    """SIGTERM, SIGINT and SIGHUP end the agent cleanly; the loop sees them through a pipe."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_fd = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = self.signum or signum

    def __call__(self) -> bool:
        """True once a stop signal arrived."""
        return self.signum is not None

    def close(self) -> None:
        """Restore the handlers and close the pipe."""
        for s, old in self._old.items():
            signal.signal(s, old)
        signal.set_wakeup_fd(self._old_fd)
        os.close(self.rfd)
        os.close(self.wfd)


class Channel:
    """One open channel to the host (a port fd or a connected socket fd), non-blocking."""

    def __init__(self, fd: int, log: EventLog, stop: Stopper) -> None:
        self.fd = fd
        self.log = log
        self.stop = stop
        os.set_blocking(fd, False)

    def read(self) -> bytes | None:
        """What is there to read (b"" if nothing yet); None at end of file or hang-up."""
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError as err:
            if err.errno in (errno.ECONNRESET, errno.EPIPE, errno.EIO):
                return None
            raise
        return data or None

    def write(self, data: bytes) -> bool:
        """Write all of ``data``; False if the host is gone, reads nothing for a while, or we stop.

        "A while" is :data:`WRITE_TIMEOUT_S` without progress: a host that
        reads slowly, but reads, gets everything. The wait ends at a hang-up
        (a virtio port whose host side is closed polls as hung up while its
        writes fail with EAGAIN, which would otherwise never end), and at a
        stop signal.
        """
        view = memoryview(data)
        poller: select.poll | None = None
        deadline = 0.0
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                n = 0
            except OSError as err:
                if err.errno in (errno.EPIPE, errno.ECONNRESET, errno.EIO):
                    return False
                raise
            view = view[n:]
            if not view:
                break
            if n or poller is None:
                deadline = time.monotonic() + WRITE_TIMEOUT_S
            if poller is None:
                poller = select.poll()
                poller.register(self.fd, select.POLLOUT)
                poller.register(self.stop.rfd, select.POLLIN)
            left = deadline - time.monotonic()
            events = dict(poller.poll(max(0, math.ceil(left * 1000)))) if left > 0 else {}
            _drain(self.stop.rfd)
            if self.stop():
                self.log(f"stopping: {len(view)} bytes of replies dropped")
                return False
            if events.get(self.fd, 0) & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                self.log(f"the host hung up: {len(view)} bytes of replies dropped")
                return False
            if time.monotonic() >= deadline:
                self.log(
                    f"the host did not read the replies for {WRITE_TIMEOUT_S:g} s: "
                    f"{len(view)} bytes of them dropped"
                )
                return False
        return True


def serve_channel(channel: Channel, dispatcher: Dispatcher, stop: Stopper, *, retry_on_eof: bool) -> None:
    """Read requests from ``channel`` and answer them until it closes (or, for a port, until stopped)."""
    stream = JsonStream()
    poller = select.poll()
    poller.register(channel.fd, select.POLLIN)
    poller.register(stop.rfd, select.POLLIN)
    while not stop():
        events = dict(poller.poll())
        _drain(stop.rfd)
        if stop():
            return
        if channel.fd not in events:
            continue
        data = channel.read()
        if data is None:
            if not retry_on_eof:
                return
            # No host on the port's other end: look again soon, as qemu-ga does.
            idle = select.poll()
            idle.register(stop.rfd, select.POLLIN)
            idle.poll(int(IDLE_RETRY_S * 1000))
            continue
        # Replies in order; the errors a burst of garbage produced go out in one write,
        # before the next command runs (it may take long: a freeze). Once stopping, the
        # rest of the input is left unread: the freeze is released as the agent ends.
        pending: list[bytes] = []
        for parsed in stream.feed(data):
            if parsed.error is None:
                if not _flush(channel, pending, retry_on_eof):
                    return
                pending = []
            pending += dispatcher.handle(parsed)
            if parsed.error is None:
                if not _flush(channel, pending, retry_on_eof):
                    return
                pending = []
        if not _flush(channel, pending, retry_on_eof):
            return


def serve_device(path: str, dispatcher: Dispatcher, stop: Stopper, log: EventLog) -> None:
    """Serve the virtio-serial port at ``path`` until stopped.

    Whoever holds the other end is the host: it freezes this machine and
    its forwarded commands run as root. So, run by root, the port is
    reached only through directories and links only root can change
    (udev's ``/dev/virtio-ports/...`` link is), and is a character device
    owned by root: never a user's terminal a planted link points at.
    """
    trusted: os.stat_result | None = None
    if os.geteuid() == 0:
        try:
            _, trusted = resolve(os.path.abspath(path))
        except UnsafeDirectoryError as err:
            raise PermissionError(errno.EPERM, f"unsafe path to the port: {err}", path) from err
        if stat.S_ISCHR(trusted.st_mode) and trusted.st_uid != 0:
            raise PermissionError(errno.EPERM, f"the port is owned by uid {trusted.st_uid}, not root", path)
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISCHR(st.st_mode):
            raise OSError(errno.ENODEV, "not a character device", path)
        if trusted is not None and st.st_rdev != trusted.st_rdev:
            raise OSError(errno.EAGAIN, "the port changed while it was being checked", path)
        log(f"serving the port {path}")
        serve_channel(Channel(fd, log, stop), dispatcher, stop, retry_on_eof=True)
    finally:
        os.close(fd)


def serve_unix(
    path: str, dispatcher: Dispatcher, stop: Stopper, log: EventLog, ready: Callable[[], None]
) -> None:
    """Listen on the unix socket ``path`` and serve one client at a time until stopped.

    Run by root, the socket's directory must be root's alone
    (:func:`quiesce.engine.trust.check_directory`, every directory above it
    too): whoever else could write it could swap the socket (and so choose
    who freezes this machine) or, through a planted link, make the unlinks
    here remove a file of root's. Raises ``OSError`` (``EPERM``) naming it.
    """
    path = os.path.abspath(path)
    if os.geteuid() == 0:
        try:
            check_directory(os.path.dirname(path))
        except UnsafeDirectoryError as err:
            raise PermissionError(errno.EPERM, f"unsafe directory for the socket: {err}", path) from err
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old = os.umask(0o077)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(1)
        log(f"listening on {path}")
        ready()
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        poller.register(stop.rfd, select.POLLIN)
        while not stop():
            events = dict(poller.poll())
            _drain(stop.rfd)
            if listener.fileno() not in events or stop():
                continue
            conn, _ = listener.accept()
            with conn:
                serve_channel(Channel(conn.fileno(), log, stop), dispatcher, stop, retry_on_eof=False)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(path)


def _flush(channel: Channel, replies: list[bytes], keep_on_failure: bool) -> bool:
    """Write ``replies``; whether to go on serving ``channel`` (never once stopping)."""
    if replies and not channel.write(b"".join(replies)) and not keep_on_failure:
        return False
    return not channel.stop()


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass
