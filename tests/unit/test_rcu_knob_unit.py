"""open_knob on injected paths: every reason to run without expedited RCU is found and named."""

from __future__ import annotations

from pathlib import Path

from quiesce.engine.rcu import open_knob


def _file(tmp_path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content)
    return str(path)


def test_usable_knob_is_claimed_and_restored(tmp_path):
    """A knob reading 0: claimed, set to 1 by enable, back to 0 when closed."""
    knob = _file(tmp_path, "knob", "0\n")
    rcu, why = open_knob(knob, str(tmp_path / "no-rcu-normal"))
    assert why is None and rcu is not None and rcu.original == b"0"
    try:
        rcu.enable()
        assert Path(knob).read_text() == "1\n"
    finally:
        rcu.close()
    assert Path(knob).read_text().strip() == "0"


def test_missing_knob_names_enoent(tmp_path):
    """No knob at all: None and the errno's name."""
    rcu, why = open_knob(str(tmp_path / "absent"), str(tmp_path / "no-rcu-normal"))
    assert rcu is None and why is not None
    assert "(ENOENT)" in why and "running without expedited RCU" in why


def test_unexpected_value_is_refused(tmp_path):
    """A knob reading neither 0 nor 1 is never written (a ledger could not record it)."""
    knob = _file(tmp_path, "knob", "7\n")
    rcu, why = open_knob(knob, str(tmp_path / "no-rcu-normal"))
    assert rcu is None and why is not None and "reads '7'" in why
    assert Path(knob).read_text() == "7\n"


def test_rcu_normal_overrides(tmp_path):
    """rcu_normal reading 1: the knob is not opened, and the reason names rcu_normal."""
    knob = _file(tmp_path, "knob", "0\n")
    normal = _file(tmp_path, "rcu_normal", "1\n")
    rcu, why = open_knob(knob, normal)
    assert rcu is None and why is not None and normal in why and "rcu_normal=1" in why


def test_a_second_claim_is_refused_while_the_first_holds_it(tmp_path):
    """Two freezes at once: the second runs without the knob; once the first is done it can claim it."""
    knob = _file(tmp_path, "knob", "0\n")
    normal = str(tmp_path / "no-rcu-normal")
    first, _ = open_knob(knob, normal)
    assert first is not None
    try:
        first.enable()
        second, why = open_knob(knob, normal)
        assert second is None and why is not None and "held by another freeze" in why
    finally:
        first.close()
    third, why = open_knob(knob, normal)
    assert why is None and third is not None and third.original == b"0"
    third.close()
