"""``quiesce fleet demo`` end to end, and the fleet commands' parser and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quiesce import APPLICATION, CRASH, FAILED, FILESYSTEM
from quiesce.cli import build_parser, main
from quiesce.fleet.cli import exit_for


def test_exit_codes_follow_quiesce_run():
    """0 application-consistent, 8 weaker, 9 failed."""
    assert [exit_for(c) for c in (APPLICATION, FILESYSTEM, CRASH, FAILED)] == [0, 8, 8, 9]


def test_parser_knows_agent_and_fleet():
    """``agent`` and ``fleet run|status|demo`` parse with their options."""
    p = build_parser()
    a = p.parse_args(["agent", "--etcd", "http://e:2379", "--group", "g", "--name", "n1"])
    assert (a.group, a.name, a.ttl) == ("g", "n1", 5)
    r = p.parse_args(
        [
            "fleet",
            "run",
            "--etcd",
            "https://e:2379",
            "--group",
            "g",
            "--expect",
            "3",
            "--cacert",
            "/ca",
            "--user",
            "u",
            "--password-file",
            "/pw",
        ]
    )
    assert (r.expect, r.cacert, r.user, r.deadline) == (3, "/ca", "u", 10.0)
    assert p.parse_args(["fleet", "demo", "--agents", "4"]).agents == 4


def test_bad_group_name_and_both_member_options_are_usage_errors(capsys):
    """A group name with a slash, or --members with --expect: exit 2, nothing contacted."""
    assert main(["fleet", "run", "--etcd", "http://127.0.0.1:9", "--group", "a/b"]) == 2
    assert (
        main(
            [
                "fleet",
                "run",
                "--etcd",
                "http://127.0.0.1:9",
                "--group",
                "g",
                "--members",
                "a",
                "--expect",
                "1",
            ]
        )
        == 2
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://",
        "ftp://x:1",
        "http://[::1",
        "http://h:99999",
        "http://h:port",
        "http://h:1/v3",
        "http://h:1?x=1",
        "http://h:1?",
        "http://h:1#f",
        "http://ho st:1",
        "http://-h:1",
    ],
)
def test_a_malformed_endpoint_is_a_usage_error_naming_it(endpoint, capsys):
    """Exit 2 with the endpoint named, before anything is contacted; never a bare parser message."""
    pytest.importorskip("etcd3gw")
    assert main(["fleet", "status", "--etcd", endpoint, "--group", "g"]) == 2
    assert f"invalid etcd endpoint {endpoint!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("endpoints", "said"),
    [(",,", "no etcd endpoint given"), ("http://h:1,,http://h:2", "an empty etcd endpoint in")],
)
def test_an_empty_endpoint_in_the_list_is_a_usage_error(endpoints, said, capsys):
    """A list with a hole is a mistyped list: said, not skipped."""
    pytest.importorskip("etcd3gw")
    for argv in (["fleet", "status"], ["agent", "--name", "n1"]):
        assert main([*argv, "--etcd", endpoints, "--group", "g"]) == 2
        assert said in capsys.readouterr().err


def test_a_password_in_the_endpoint_is_refused_and_not_repeated(capsys):
    """``user:password@`` would not be sent (the login is --user): refused, and the password not echoed."""
    pytest.importorskip("etcd3gw")
    assert main(["fleet", "status", "--etcd", "http://root:s3cret@127.0.0.1:9", "--group", "g"]) == 2
    err = capsys.readouterr().err
    assert "--user" in err and "s3cret" not in err and "root" not in err


def test_unreachable_etcd_is_an_error(capsys):
    """Nothing listens: exit 1 with a message naming etcd; the caller's SIGTERM handler is left as it was."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert main(["fleet", "status", "--etcd", "http://127.0.0.1:9", "--group", "g"]) == 1
    assert "etcd" in capsys.readouterr().err
    assert main(["fleet", "run", "--etcd", "http://127.0.0.1:9", "--group", "g", "--timeout", "0.1"]) == 1
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.privileged
@pytest.mark.timeout(300)
def test_demo_takes_a_consistent_cut(lab_namespace):
    """The demo's whole story with two agents: one cut, restored, consistent; JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "quiesce", "fleet", "demo", "--agents", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["verdict"] == APPLICATION and out["cut_consistent"] and out["violations"] == []
    assert out["writer_rounds"] > 10 and len(out["restored_tops"]) == 2 and min(out["restored_tops"]) > 0


def test_without_the_fleet_extra_the_error_names_it():
    """etcd3gw not installed: ``fleet status`` and ``agent`` exit 1 naming ``quiesce[fleet]``."""
    code = (
        "import sys; sys.modules['etcd3gw'] = None\n"
        "from quiesce.cli import main\n"
        "a = main(['fleet', 'status', '--etcd', 'http://127.0.0.1:9', '--group', 'g'])\n"
        "b = main(['agent', '--etcd', 'http://127.0.0.1:9', '--group', 'g', '--name', 'n'])\n"
        "print(a, b)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["1", "1"], done.stderr
    assert done.stderr.count("pip install 'quiesce[fleet]'") == 2


def test_teardown_never_kills_in_the_labs_own_mount_namespace(tmp_path):
    """A node whose recorded namespace is the caller's own is refused, not swept."""
    import os
    from pathlib import Path

    from quiesce.fleet.labnode import Node, kill_namespace_leftovers

    node = Node(1, "n1", "none", "10.213.0.11", Path("/nonexistent"), "/dev/null", tmp_path)
    node.mount_ns_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    with pytest.raises(RuntimeError, match="own"):
        kill_namespace_leftovers(node)
    assert node.mount_ns_fd is None


def test_demo_printout_names_every_step_and_the_check():
    """The terminal printout: the keys by revision, each step's time, each node, the verdict, the check."""
    import io

    from quiesce.fleet.demo import print_demo

    outcome = {
        "agents": 2,
        "etcd": "http://10.213.7.1:2379",
        "run_id": "R1",
        "timeline": [
            {"revision": 5, "key": "spec", "node": None},
            {"revision": 9, "key": "frozen", "node": "n1"},
        ],
        "phases_ns": {"freeze": 2_500_000, "thaw": 40_000_000},
        "nodes": [
            {"node": "n1", "window_ns": 12_300_000, "thawed_by": "thaw", "verdict": APPLICATION},
            {"node": "n2", "window_ns": None, "thawed_by": "not-frozen", "verdict": "failed"},
        ],
        "verdict": APPLICATION,
        "exit": 0,
        "writer_rounds": 7,
        "restored_tops": [3, 3],
        "violations": [],
        "cut_consistent": True,
    }
    out = io.StringIO()
    print_demo(outcome, out)
    lines = out.getvalue().splitlines()
    assert "  rev      5  spec" in lines and "  rev      9  frozen n1" in lines
    assert "when the coordinator saw each step, from the start of the run:" in lines
    assert "  freeze           +     2.5 ms" in lines and "  thaw             +    40.0 ms" in lines
    assert not any(line.strip().startswith("cut") for line in lines)  # a step it never saw is not shown
    assert f"  n1     frozen 12.3 ms, thawed by thaw: {APPLICATION}" in lines
    assert "  n2     thawed by not-frozen: failed" in lines
    assert lines[-3:] == [
        f"verdict: {APPLICATION} (exit 0)",
        "writer: 7 rounds; restored snapshots hold up to [3, 3]",
        "restored snapshots: a consistent cut (no node holds a write that follows a missing one)",
    ]
    assert all(line.count("(") == line.count(")") for line in lines)
