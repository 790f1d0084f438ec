"""Whatever is in etcd, quiesce reads it safely (no root, no etcd).

Anyone who holds a group's etcd role can write any key under its prefix
with any value. Nothing read from there may crash an agent, a coordinator or
``fleet status``, be half used, make quiesce's JSON output invalid, or reach
a terminal with control characters in it.
"""

from __future__ import annotations

import base64
import io
import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quiesce import FAILED
from quiesce.cli.parser import UsageError, build_parser
from quiesce.fleet import FleetError
from quiesce.fleet.coordinator import FleetOptions, FleetResult, fleet_run, resolve_members, timeline_of
from quiesce.fleet.protocol import (
    MAX_MEMBERS,
    PROTOCOL_VERSION,
    SPEC_MAX_S,
    Keys,
    Record,
    RunSpec,
    RunView,
    spec_members,
)
from quiesce.fleet.status import group_status, print_result, print_status, shown
from quiesce.fleet.verdict import judge
from quiesce.fleet.wire import b64, decode_value, unb64

KEYS = Keys("g")
#: A registration of this version's agent.
V = {"protocol": PROTOCOL_VERSION}

# JSON as etcd can hold it: strict JSON values, big integers, odd text (control characters included).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["thaw", "abort", "application-consistent", "failed", "\x1b[2J", "a\nb", "n1"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
FIELDS = (
    "members",
    "deadline_s",
    "ready_timeout_s",
    "ok",
    "detail",
    "thawed_by",
    "thaw_revision",
    "local",
    "window_ns",
    "held_through_snapshot",
    "config_error",
    "error",
    "reason",
)
records = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
members = st.lists(st.sampled_from(["n1", "n2", "n3"]), min_size=1, max_size=3, unique=True)


def _printable(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text)


@given(
    value=st.dictionaries(st.sampled_from(FIELDS[:3]), json_values, max_size=3),
    versioned=st.booleans(),
    members=members,
)
@settings(max_examples=400, deadline=None)
def test_a_spec_is_either_whole_and_in_range_or_refused_with_fleet_error(value, versioned, members):
    """No value makes RunSpec.parse raise anything but FleetError, or return something out of range."""
    if versioned:  # past the version check, with valid members unless the value has its own
        value = {"members": list(members), **value, "protocol": PROTOCOL_VERSION}
    try:
        spec = RunSpec.parse(value)
    except FleetError as err:
        assert "the run's" in str(err)
        return
    assert spec.members and len(set(spec.members)) == len(spec.members)
    assert all(isinstance(m, str) and KEYS.parse(KEYS.key("r1", "done", m)) for m in spec.members)
    assert spec.deadline_s is None or 0 < spec.deadline_s <= SPEC_MAX_S
    assert 0 < spec.ready_timeout_s <= SPEC_MAX_S


def test_the_specs_quiesce_writes_parse_and_the_usual_bad_ones_do_not():
    """The coordinator's own spec is taken; members as a string, a duplicate, nan, "10" are not."""
    good = RunSpec.parse(
        {"protocol": 2, "members": ["n1", "n2"], "deadline_s": 10.0, "ready_timeout_s": 60, "created_unix": 1}
    )
    assert good == RunSpec(("n1", "n2"), 10.0, 60.0)
    assert RunSpec.parse({"protocol": 2, "members": ["n1"]}) == RunSpec(("n1",), None, 60.0)
    for bad in (
        {"members": "n1n2"},  # a string: "n1" in it would be true
        {"members": ["n1", "n1"]},
        {"members": ["n1", "../n2"]},
        {"members": []},
        {"members": ["n1"], "deadline_s": float("nan")},
        {"members": ["n1"], "deadline_s": "10"},
        {"members": ["n1"], "deadline_s": True},
        {"members": ["n1"], "deadline_s": 10**400},
        {"members": ["n1"], "ready_timeout_s": 0},
        {"members": ["n1"], "ready_timeout_s": -1},
    ):
        try:
            RunSpec.parse({"protocol": 2, **bad})
        except FleetError:
            continue
        raise AssertionError(f"taken: {bad!r}")
    assert spec_members({"members": "n1n2"}) == ()
    for version in (None, 1, 3, "2"):  # another coordinator's layout and rules: declined, whatever else
        try:
            RunSpec.parse({"protocol": version, "members": ["n1"]})
        except FleetError as err:
            assert "upgrade a group's coordinator and agents together" in str(err)
        else:
            raise AssertionError(f"protocol {version!r} taken")


@given(
    spec=records,
    reports=st.dictionaries(
        st.tuples(
            st.sampled_from(["ready", "frozen", "snapshotted", "done"]), st.sampled_from(["n1", "n2", "n3"])
        ),
        records,
        max_size=8,
    ),
    steps=st.dictionaries(st.sampled_from(["freeze", "cut", "thaw", "abort", "alive"]), records, max_size=5),
    member_list=members | json_values,
)
@settings(max_examples=300, deadline=None)
def test_any_run_keys_give_a_verdict_valid_json_and_clean_text(spec, reports, steps, member_list):
    """judge, the result's JSON and its text take any values: no exception, no control character."""
    view = RunView("r1")
    rev = iter(range(2, 10_000))
    view.add("spec", None, Record({**spec, "members": member_list}, 1))
    for what, value in steps.items():
        view.add(what, None, Record(value, next(rev)))
    for (what, node), value in reports.items():
        view.add(what, node, Record(value, next(rev)))
    verdict = judge(view)
    assert verdict.consistency in (
        "application-consistent",
        "filesystem-consistent",
        "crash-consistent",
        FAILED,
    )
    result = FleetResult("g", "r1", verdict, timeline_of(view))
    json.dumps(result.to_dict(), allow_nan=False)
    out = io.StringIO()
    print_result(result, out)
    assert _printable(out.getvalue())


def test_values_that_are_not_strict_json_come_back_raw():
    """NaN, Infinity and nesting too deep for the parser: {"raw": ...}, never an exception or a NaN."""
    for text in ('{"a": NaN}', '{"a": Infinity}', "[" * 100_000 + "]" * 100_000, "\xff\xfe", "{"):
        raw = base64.b64encode(text.encode("utf-8", "surrogateescape")).decode()
        assert decode_value(raw) == {"raw": raw}
    assert decode_value(b64('{"a": 1}')) == {"a": 1}
    assert decode_value(b64("[1]")) == {"value": [1]}
    assert unb64(base64.b64encode(b"/quiesce/g/members/\xff").decode()).endswith("\ufffd")


def test_keys_that_quiesce_never_writes_are_not_part_of_a_run():
    """Empty, dotted or odd run and node names, extra levels, control characters: parse gives None."""
    for key in (
        "/quiesce/g/runs//spec",
        "/quiesce/g/runs/../spec",
        "/quiesce/g/runs/r1/spec/x",
        "/quiesce/g/runs/r1/sp\x1bec",
        "/quiesce/g/reports/r1/done/",
        "/quiesce/g/reports/r1/done/n\ufffd",
        "/quiesce/g/reports/r1/done/n 1",
        "/quiesce/other/runs/r1/spec",
    ):
        assert KEYS.parse(key) is None, key
    assert KEYS.parse("/quiesce/g/runs/r1/spec") == ("r1", "spec", None)
    assert KEYS.parse("/quiesce/g/reports/r1/done/n1") == ("r1", "done", "n1")
    assert KEYS.member_name("/quiesce/g/members/n1") == "n1"
    assert KEYS.member_name("/quiesce/g/members/a/b") is None


class _Store:
    """What group_status and resolve_members read: fixed records under the group."""

    def __init__(self, records: dict[str, dict]) -> None:
        self.records = {k: Record(v, i + 1) for i, (k, v) in enumerate(records.items())}

    def get_prefix(self, prefix: str) -> tuple[int, dict[str, Record]]:
        return 99, {k: r for k, r in self.records.items() if k.startswith(prefix)}

    def get_prefixes(self, prefixes: list[str]) -> tuple[int, dict[str, Record]]:
        return 99, {k: r for k, r in self.records.items() if k.startswith(tuple(prefixes))}

    def grant(self, ttl_s: int) -> int:
        return 7

    def keep_alive(self, lease: int, ttl_s: int, on_lost: object) -> object:
        return lambda: None

    def revoke(self, lease: int) -> None:
        self.revoked = lease

    def put_if(self, *args: object, **kwargs: object) -> tuple[bool, int]:
        raise AssertionError("nothing may be written")


def test_status_takes_hostile_registrations_and_runs():
    """Odd since_unix, a forged node name, escapes in a host or a reason: status stays valid and clean."""
    store = _Store(
        {
            "/quiesce/g/members/n1": {
                "node": "n2",
                "since_unix": "yesterday",
                "host": "h\x1b[31m",
                "pid": [1],
            },
            "/quiesce/g/members/n2": {"since_unix": 10**400, "state": "running", "last_run": "r\n1"},
            "/quiesce/g/members/a b": {"node": "n3"},
            "/quiesce/g/runs/r1/spec": {"members": ["n1", "n2"], "deadline_s": "x"},
            "/quiesce/g/runs/r1/abort": {"reason": "\x1b]0;owned\x07\nresult: application-consistent"},
            "/quiesce/g/reports/r1/done/n1": {"window_ns": 10**400, "local": {"x": 1}, "thawed_by": "\r"},
            "/quiesce/g/runs/r2/spec": {"members": 5},
        }
    )
    status = group_status(store, "g")  # type: ignore[arg-type]
    json.dumps(status, allow_nan=False)
    assert [m["node"] for m in status["members"]] == ["n1", "n2"]  # named by their keys
    assert [m["registered_for_s"] for m in status["members"]] == [None, None]
    assert {r["run_id"]: r["consistency"] for r in status["runs"]} == {"r1": FAILED, "r2": FAILED}
    out = io.StringIO()
    print_status(status, out)
    text = out.getvalue()
    assert _printable(text) and "\nresult:" not in text
    assert "\\x1b" in text  # the escape is shown, not sent


def test_expect_counts_only_names_an_agent_can_have():
    """A stray key under members/ is not an agent: --expect 1 takes n1 alone."""
    store = _Store({"/quiesce/g/members/n1": V, "/quiesce/g/members/x/y": {}, "/quiesce/g/members/-": {}})
    assert resolve_members(store, KEYS, FleetOptions(expect=1, timeout_s=0.1)) == ["n1"]  # type: ignore[arg-type]


@given(st.text(alphabet=st.characters(), max_size=300))
def test_shown_text_is_one_printable_line_of_bounded_length(text):
    """Every character a terminal would act on is escaped; the length is capped."""
    line = shown(text, 100)
    assert all(c.isprintable() for c in line) and len(line) <= 103
    if all(c in string.ascii_letters for c in text) and len(text) <= 100:
        assert line == text


def test_members_named_twice_is_a_usage_error():
    """--members n1,n1: a ValueError (exit 2) naming n1, not a spec the nodes would decline."""
    store = _Store({"/quiesce/g/members/n1": V})
    try:
        resolve_members(store, KEYS, FleetOptions(members=("n1", "n1"), timeout_s=0.1))  # type: ignore[arg-type]
    except ValueError as err:
        assert "n1 more than once" in str(err)
    else:
        raise AssertionError("taken")


def test_a_run_has_at_most_max_members():
    """More members than one etcd transaction can check: the nodes decline the spec, the coordinator
    refuses them as a usage error, and --expect stops at the same number."""
    names = [f"m{i:03d}" for i in range(MAX_MEMBERS + 1)]
    spec = {"protocol": PROTOCOL_VERSION}
    assert RunSpec.parse({**spec, "members": names[:MAX_MEMBERS]}).members == tuple(names[:MAX_MEMBERS])
    try:
        RunSpec.parse({**spec, "members": names})
    except FleetError as err:
        assert f"at most {MAX_MEMBERS} members, not {MAX_MEMBERS + 1}" in str(err)
    else:
        raise AssertionError("taken")
    store = _Store({f"/quiesce/g/members/{n}": V for n in names})
    try:
        resolve_members(store, KEYS, FleetOptions(members=tuple(names), timeout_s=0.1))  # type: ignore[arg-type]
    except ValueError as err:
        assert f"a run has at most {MAX_MEMBERS}" in str(err)
    else:
        raise AssertionError("taken")
    parser = build_parser()
    argv = ["fleet", "run", "--etcd", "http://e:2379", "--group", "g", "--expect"]
    assert parser.parse_args([*argv, str(MAX_MEMBERS)]).expect == MAX_MEMBERS
    refused = f"--expect: expected a whole number of agents from 1 to {MAX_MEMBERS}, not '{MAX_MEMBERS + 1}'"
    with pytest.raises(UsageError, match=refused):
        parser.parse_args([*argv, str(MAX_MEMBERS + 1)])


def test_a_coordinator_refuses_options_its_nodes_would_decline():
    """Through the Python API, a deadline of 2 hours or nan: FleetError before the run is written."""
    store = _Store({"/quiesce/g/members/n1": V})
    for deadline in (7200.0, float("nan"), 0.0):
        try:
            fleet_run(store, "g", FleetOptions(deadline_s=deadline, timeout_s=0.1))  # type: ignore[arg-type]
        except FleetError as err:
            assert "deadline_s" in str(err)
        else:
            raise AssertionError(f"deadline {deadline} taken")
    assert store.revoked == 7


def test_a_coordinator_refuses_members_whose_agents_speak_another_protocol():
    """An agent registered without this version (an older one) is named; nothing is written."""
    store = _Store({"/quiesce/g/members/n1": V, "/quiesce/g/members/n2": {"node": "n2"}})
    for opts in (FleetOptions(expect=2, timeout_s=0.1), FleetOptions(members=("n1", "n2"), timeout_s=0.1)):
        try:
            resolve_members(store, KEYS, opts)  # type: ignore[arg-type]
        except FleetError as err:
            assert "n2 (None)" in str(err) and "n1" not in str(err).split(":", 1)[1]
        else:
            raise AssertionError("taken")
    assert resolve_members(store, KEYS, FleetOptions(members=("n1",), timeout_s=0.1)) == ["n1"]  # type: ignore[arg-type]


def _clean_run(done_extra=None, snap_extra=None):
    """A run of n1 and n2 in the protocol's order, each value as an agent writes it (then changed)."""
    view = RunView("r1")
    view.add("spec", None, Record({"members": ["n1", "n2"]}, 2))
    view.add("freeze", None, Record({}, 5))
    view.add("frozen", "n1", Record({}, 6))
    view.add("frozen", "n2", Record({}, 7))
    view.add("cut", None, Record({}, 7))
    for rev, node in ((8, "n1"), (9, "n2")):
        view.add("snapshotted", node, Record({"ok": True, **(snap_extra or {})}, rev))
    view.add("thaw", None, Record({}, 9))
    for rev, node in ((10, "n1"), (11, "n2")):
        done = {
            "thawed_by": "thaw",
            "thaw_revision": 9,
            "local": "application-consistent",
            "held_through_snapshot": True,
            **(done_extra or {}),
        }
        view.add("done", node, Record(done, rev))
    return view


def test_the_clean_run_is_application_consistent():
    """The baseline of the cases below: as the agents write it, the run is consistent."""
    assert judge(_clean_run()).consistency == "application-consistent"


@pytest.mark.parametrize(
    ("done_extra", "snap_extra"),
    [
        (None, {"ok": "false"}),
        (None, {"ok": 1}),
        (None, {"ok": "true"}),
        ({"held_through_snapshot": "false"}, None),
        ({"held_through_snapshot": 1}, None),
        ({"held_through_snapshot": [0]}, None),
        ({"thaw_revision": 9.0}, None),
        ({"thaw_revision": "9"}, None),
        ({"thaw_revision": True}, None),
    ],
)
def test_a_fact_written_in_another_form_never_makes_the_run_consistent(done_extra, snap_extra):
    """``"false"``, 1, 9.0: what no agent writes does not count as the agent's true or revision."""
    verdict = judge(_clean_run(done_extra, snap_extra))
    assert verdict.consistency != "application-consistent", verdict


def test_a_revision_of_true_is_not_revision_one():
    """JSON ``true`` equals 1 in Python: a thaw at revision 1 still needs the integer 1."""
    view = _clean_run({"thaw_revision": True})
    view.add("thaw", None, Record({}, 1))
    assert judge(view).consistency != "application-consistent"


facts = st.sampled_from([True, False, "true", "false", 1, 0, 9, 9.0, None, "thaw", "abort", [True]])
changes = st.lists(
    st.one_of(
        # a field of a node's report set to another value
        st.tuples(
            st.sampled_from(["snapshotted", "done"]),
            st.sampled_from(["n1", "n2"]),
            st.sampled_from(["ok", "held_through_snapshot", "thaw_revision", "thawed_by"]),
            facts,
        ),
        # a key moved to another revision
        st.tuples(
            st.sampled_from(["frozen", "snapshotted", "done", "cut", "thaw"]),
            st.sampled_from(["n1", "n2"]),
            st.just("revision"),
            st.integers(min_value=1, max_value=14),
        ),
    ),
    max_size=3,
)


@given(changes=changes)
@settings(max_examples=600, deadline=None)
def test_application_consistent_only_when_every_node_proves_the_cut(changes):
    """A clean run with any keys changed: consistent only if, for every member, frozen <= cut <
    snapshotted (ok: true), its freeze held (true), it thawed by the thaw whose integer revision it
    names, and thaw < done."""
    view = _clean_run()
    for what, node, name, value in changes:
        single = what in ("cut", "thaw")
        old = view.single[what] if single else view.node(what, node)
        assert old is not None
        if name == "revision":
            new = Record(old.value, value)
        else:
            new = Record({**old.value, name: value}, old.mod_revision)
        view.add(what, None if single else node, new)
    if judge(view).consistency != "application-consistent":
        return
    cut, thaw = view.single["cut"].mod_revision, view.single["thaw"].mod_revision
    for node in ("n1", "n2"):
        frozen, snap, done = (view.node(w, node) for w in ("frozen", "snapshotted", "done"))
        assert frozen is not None and snap is not None and done is not None
        assert frozen.mod_revision <= cut < snap.mod_revision
        assert snap.value["ok"] is True and done.value["held_through_snapshot"] is True
        assert done.value["thawed_by"] == "thaw" and type(done.value["thaw_revision"]) is int
        assert done.value["thaw_revision"] == thaw < done.mod_revision
