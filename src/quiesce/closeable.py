"""``Closeable``: a resource released by ``close()``, which a ``with`` block also releases."""

from __future__ import annotations

from typing import Self


class Closeable:
    """``with obj:`` gives ``obj`` and calls ``obj.close()`` at the end, however the block ended.

    A subclass defines ``close()``, idempotent: it may be called again by
    an owner that does not know a ``with`` block already closed it.
    """

    def close(self) -> None:
        """Release what the object holds (each subclass says what)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
