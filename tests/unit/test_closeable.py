"""``Closeable``: every resource-holding class closes at the end of a ``with`` block, however it ended."""

import pytest

from quiesce.closeable import Closeable
from quiesce.engine.native.session import Session
from quiesce.engine.rundir import RunDir
from quiesce.sandbox import Sandbox
from quiesce.supervise.cgroups import RunCgroup, ScriptCgroup
from quiesce.supervise.checked import CheckedScript
from quiesce.supervise.launch import Launch


class Counted(Closeable):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_with_gives_the_object_and_closes_it():
    with Counted() as c:
        assert isinstance(c, Counted)
        assert c.closed == 0
    assert c.closed == 1


def test_an_exception_in_the_block_still_closes_and_propagates():
    c = Counted()
    with pytest.raises(KeyError), c:
        raise KeyError("x")
    assert c.closed == 1


def test_close_must_be_defined():
    with pytest.raises(NotImplementedError), Closeable():
        pass


@pytest.mark.parametrize("cls", [Session, RunDir, Sandbox, RunCgroup, ScriptCgroup, CheckedScript, Launch])
def test_every_resource_class_is_closed_by_a_with_block(cls):
    """Each one's own ``close`` is what the block's end calls."""
    assert issubclass(cls, Closeable)
    assert cls.close is not Closeable.close
