"""How an agent writes its ``done`` after a run: with its registration in one transaction, else apart."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

pytest.importorskip("etcd3gw")

from quiesce.fleet import FleetError
from quiesce.fleet.agent import Agent, AgentOptions
from quiesce.fleet.protocol import Keys

DONE = Keys("g").key("r1", "done", "n1")


class _Store:
    """Records what the agent writes; its transactions fail when told to."""

    def __init__(self, txn_fails: bool) -> None:
        self.txn_fails = txn_fails
        self.calls: list[tuple[Any, ...]] = []

    def put_if(
        self, puts: Mapping[str, Any], *, lease: Mapping[str, int] | None = None, **_: Any
    ) -> tuple[bool, int]:
        self.calls.append(("txn", sorted(puts), dict(lease or {})))
        if self.txn_fails:
            raise FleetError("etcd refused: requested lease not found")
        return True, 9

    def put(self, key: str, value: Mapping[str, Any], lease: int | None = None) -> int:
        self.calls.append(("put", key, lease))
        return 10


def _agent(store: _Store) -> Agent:
    agent = Agent(
        AgentOptions(endpoints=("http://127.0.0.1:9",), group="g", node="n1", config_path="/nonexistent")
    )
    agent.store = store  # type: ignore[assignment]
    agent.lease = 7
    agent.state = {"state": "idle", "last_run": "r1"}
    return agent


def test_done_and_the_registration_go_in_one_transaction():
    store = _Store(txn_fails=False)
    agent = _agent(store)
    agent._report("r1", {"local": "ok"})
    member = agent.keys.member("n1")
    assert store.calls == [("txn", sorted([DONE, member]), {member: 7})]


def test_a_refused_transaction_writes_done_then_the_registration_apart():
    store = _Store(txn_fails=True)
    agent = _agent(store)
    agent._report("r1", {"local": "ok"})
    member = agent.keys.member("n1")
    assert store.calls[1:] == [("put", DONE, None), ("put", member, 7)]


def test_with_the_lease_lost_no_transaction_is_tried():
    store = _Store(txn_fails=False)
    agent = _agent(store)
    agent._lease_lost.set()
    agent._report("r1", {"local": "ok"})
    assert [c[0] for c in store.calls] == ["put", "put"]
    assert store.calls[0][1] == DONE
