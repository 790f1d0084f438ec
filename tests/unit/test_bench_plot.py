"""``quiesce bench``'s cold default, ``--warm``/``--idle``, and ``--plot``'s pictures, without freezing."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench import results as bench_results
from quiesce.bench import command as bench_command
from quiesce.bench import plot
from quiesce.bench import runner as bench_runner
from quiesce.bench.results import BenchResult, FsTiming, RepSample
from quiesce.bench.runner import DEFAULT_IDLE_S, Bench, BenchOptions
from quiesce.cli import main
from quiesce.cli.exits import Exit
from tests.unit.test_benchmark_unit import a_target, parse

SVG = "{http://www.w3.org/2000/svg}"


def a_result(windows, mounts=("/srv/a", "/srv/b"), preflush_at_ns=-2_000_000):
    """A finished result: each repetition freezes ``mounts`` one after the other, then thaws them."""
    result = BenchResult(
        options={
            "reps": len(windows),
            "mode": "cold",
            "idle_s": 0.2,
            "preflush": True,
            "dirty_mib": 0,
            "probe": False,
            "expedite_rcu": True,
            "parallel": True,
        },
        targets=[{"mount_point": mp, "fstype": "ext4", "dev": f"7:{i}"} for i, mp in enumerate(mounts)],
    )
    for rep, w in enumerate(windows, 1):
        step = w // (2 * len(mounts))
        fss = tuple(
            FsTiming(
                mp,
                "thawed",
                freeze_ns=step,
                thaw_ns=step // 2,
                preflush_ns=500_000,
                freeze_at_ns=i * step,
                thaw_at_ns=w - step // 2,
                preflush_at_ns=preflush_at_ns,
            )
            for i, mp in enumerate(mounts)
        )
        start = rep * 10**9
        result.samples.append(RepSample(rep, f"run{rep}", w, 500_000, None, start, start + w, fss))
    return result


def svg_ids(path, prefix):
    """The ids of the SVG's elements that start with ``prefix``."""
    root = ET.parse(path).getroot()
    return [e.get("id") for e in root.iter() if (e.get("id") or "").startswith(prefix)]


def svg_texts(path):
    """Every text of the SVG (matplotlib writes text as text with ``svg.fonttype = none``)."""
    root = ET.parse(path).getroot()
    return [t.text.strip() for t in root.iter(f"{SVG}text") if t.text and t.text.strip()]


def tripwire(*args, **kwargs):
    """Stands in for planning: the test fails if anything gets that far."""
    raise AssertionError("planned or frozen although the arguments were refused")


# -- cold by default, --warm, --idle --------------------------------------------------------


def test_cold_by_default_warm_and_idle_options():
    """No option: cold with the default idle; --warm: 0; --idle S (and its old name --interval): S."""
    assert bench_command.idle_of(parse("/srv/db")) == DEFAULT_IDLE_S > 0
    assert bench_command.idle_of(parse("--warm", "/srv/db")) == 0.0
    assert bench_command.idle_of(parse("--idle", "0.5", "/srv/db")) == 0.5
    assert bench_command.idle_of(parse("--interval", "0.05", "/srv/db")) == 0.05
    assert bench_command.idle_of(parse("--idle", "0", "/srv/db")) == 0.0


def test_warm_and_idle_together_are_a_usage_error(capsys):
    """``--warm --idle S`` contradicts itself: exit 2 naming both."""
    with pytest.raises(SystemExit) as info:
        parse("--warm", "--idle", "1", "/srv/db")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--warm" in err and "--idle" in err


def test_options_carry_the_mode_and_idle(monkeypatch):
    """The plan of a run: cold with the default idle, or warm; the JSON options say which."""
    monkeypatch.setattr(bench_command, "make_plan", lambda targets: type("P", (), {"targets": (a_target(),)}))
    monkeypatch.setattr(bench_command, "check_explicit", lambda plan, targets: None)
    cold = bench_command.options_from_args(parse("/srv/db"), io.StringIO(), io.StringIO())
    warm = bench_command.options_from_args(parse("--warm", "/srv/db"), io.StringIO(), io.StringIO())
    assert (cold.idle_s, cold.mode, cold.to_dict()["mode"], cold.to_dict()["idle_s"]) == (
        DEFAULT_IDLE_S,
        "cold",
        "cold",
        DEFAULT_IDLE_S,
    )
    assert (warm.idle_s, warm.mode, warm.to_dict()["mode"]) == (0.0, "warm", "warm")
    assert bench_command.mode_text(cold.to_dict()) == f"cold ({DEFAULT_IDLE_S:g} s idle before each)"
    assert bench_command.mode_text(warm.to_dict()) == "warm (back to back)"


@pytest.mark.parametrize("idle_s", [0.0, 0.06])
def test_each_repetition_comes_after_the_idle_time(monkeypatch, idle_s):
    """The runner idles before every repetition, the first included; warm runs them back to back."""
    calls = []

    def fake_rep(self, rep, dirty_ns):
        calls.append(time.monotonic())
        time.sleep(0.001)
        calls.append(time.monotonic())
        return a_result([1_000_000]).samples[0]

    monkeypatch.setattr(Bench, "_rep", fake_rep)
    monkeypatch.setattr(bench_runner, "preflight", lambda options: None)
    started = time.monotonic()
    bench = Bench(BenchOptions((a_target(),), reps=4, idle_s=idle_s))
    bench.run()
    assert len(bench.result.samples) == 4
    starts, ends = calls[0::2], calls[1::2]
    gaps = [starts[0] - started] + [s - e for s, e in zip(starts[1:], ends, strict=False)]
    assert min(gaps) >= idle_s
    if idle_s == 0:
        assert max(gaps) < 0.05  # back to back: no pause at all


def test_help_says_cold_by_default_and_how_to_plot(capsys):
    """``bench --help`` explains the cold default, --warm, --idle and what --plot needs."""
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("Cold by default", f"(default {DEFAULT_IDLE_S:g})", "--warm", "--idle S", ".svg or .png"):
        assert words in text
    assert "pip install 'quiesce[plot]'" in text


# -- --plot refused before anything runs ----------------------------------------------------


@pytest.mark.parametrize("name", ["out.pdf", "out", "out.svg.txt", "out.jpg"])
def test_plot_with_another_suffix_is_refused_before_planning(monkeypatch, capsys, tmp_path, name):
    """Only .svg and .png: anything else is a usage error (2) before a target is even planned."""
    monkeypatch.setattr(bench_command, "make_plan", tripwire)
    assert main(["bench", "--json", "--plot", str(tmp_path / name), "/srv/db"]) == Exit.USAGE == 2
    out, err = capsys.readouterr()
    assert ".svg or .png" in err and json.loads(out)["exit"] == 2
    assert not (tmp_path / name).exists()


def test_plot_without_matplotlib_names_the_extra_and_exits_2(monkeypatch, capsys, tmp_path):
    """matplotlib missing: exit 2 before planning, the message says what to install."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(bench_command, "make_plan", tripwire)
    assert main(["bench", "--plot", str(tmp_path / "w.svg"), "/srv/db"]) == Exit.USAGE
    err = capsys.readouterr().err
    assert "pip install 'quiesce[plot]'" in err and "matplotlib" in err
    with pytest.raises(plot.PlotUnavailable, match=r"quiesce\[plot\]"):
        plot.draw(tmp_path / "x.png", {"a": [1]}, title="t")
    assert not list(tmp_path.iterdir())


def test_plot_into_a_missing_directory_is_refused(monkeypatch, capsys, tmp_path):
    """The picture's directory must exist: refused (2) before planning, not after the run."""
    monkeypatch.setattr(bench_command, "make_plan", tripwire)
    assert main(["bench", "--plot", str(tmp_path / "no" / "w.svg"), "/srv/db"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_importing_quiesce_does_not_import_matplotlib():
    """The core never loads matplotlib: only drawing does."""
    code = (
        "import sys, quiesce, quiesce.cli.parser, quiesce.bench.command, quiesce.bench.plot\n"
        "quiesce.cli.parser.build_parser()\n"
        "print('matplotlib' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- the pictures --------------------------------------------------------------------------


def test_svg_has_a_series_per_distribution_and_the_timeline(tmp_path):
    """The window and each filesystem's FIFREEZE/FITHAW are series; the timeline has 4 bars each."""
    mounts = ("/srv/a", "/srv/b", "/srv/c")
    result = a_result([3_000_000, 2_000_000, 2_600_000], mounts)
    path = tmp_path / "bench.svg"
    plot.draw_bench(result, path, "cold (0.2 s idle before each)")
    assert len(svg_ids(path, "dist-")) == 1 + 2 * len(mounts)
    bars = svg_ids(path, "span-")
    for kind in ("pre-flush", "fifreeze", "frozen", "fithaw"):
        assert len([b for b in bars if b.startswith(f"span-{kind}-") and not b.endswith("-zoom")]) == 3
    texts = svg_texts(path)
    assert "window, cold (0.2 s idle before each), expedited RCU, parallel" in texts
    for mp in mounts:
        assert f"FIFREEZE {mp}" in texts and f"FITHAW {mp}" in texts and mp in texts
    # The median window is 2.6 ms: repetition 3.
    assert any(t.startswith("repetition 3 (the median window, 2.600 ms)") for t in texts)
    assert {"pre-flush", "FIFREEZE", "frozen", "FITHAW"} <= set(texts)


def test_a_long_lead_in_adds_a_zoomed_window(tmp_path):
    """A pre-flush far before a short window: a second, zoomed timeline shows the window."""
    near = tmp_path / "near.svg"
    far = tmp_path / "far.svg"
    plot.draw_bench(a_result([1_000_000], preflush_at_ns=-500_000), near, "warm (back to back)")
    plot.draw_bench(a_result([1_000_000], preflush_at_ns=-200_000_000), far, "warm (back to back)")
    assert not [b for b in svg_ids(near, "span-") if b.endswith("-zoom")]
    zoomed = [b for b in svg_ids(far, "span-") if b.endswith("-zoom")]
    assert len(zoomed) == 8 and "the window itself (zoomed)" in svg_texts(far)


def test_png_is_a_png_of_the_expected_size(tmp_path):
    """PNG: the magic bytes, and an IHDR 900 pixels wide (9 in at 100 dpi)."""
    path = tmp_path / "bench.png"
    plot.draw_bench(a_result([1_000_000, 1_200_000]), path, "cold (0.2 s idle before each)")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 900 and 300 < height < 2000
    assert len(data) > 10_000


@pytest.fixture
def out_dir(tmp_path):
    """Where a plot may be written: root writes only into a directory only root can change."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="quiesce-test-plot-", dir="/run")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_a_picture_that_cannot_be_written_is_an_error_not_a_crash(out_dir):
    """Writing fails after the run (here the name is a directory): the reason, for exit 1."""
    tmp_path = out_dir
    (tmp_path / "taken.svg").mkdir()
    why = bench_command.write_plot(a_result([1_000_000]), str(tmp_path / "taken.svg"))
    assert why is not None and "taken.svg" in why
    assert bench_command.write_plot(a_result([1_000_000]), str(tmp_path / "ok.svg")) is None
    assert (tmp_path / "ok.svg").stat().st_size > 0


def test_spans_leave_out_missing_phases():
    """No pre-flush, or a filesystem that never froze: only what happened is drawn."""
    fs = [
        FsTiming("/a", "thawed", 10, 5, None, 0, 30, None),
        FsTiming("/b", "failed", None, None, 7, None, None, -20),
    ]
    spans = plot.spans_of(fs)
    assert [(s.row, s.kind, s.start_ns, s.end_ns) for s in spans] == [
        ("/a", "FIFREEZE", 0, 10),
        ("/a", "frozen", 10, 30),
        ("/a", "FITHAW", 30, 35),
        ("/b", "pre-flush", -20, -13),
    ]


def test_median_rep_is_the_nearest_rank_median():
    """The timeline shows the repetition of the nearest-rank median window (lower middle when even)."""
    assert plot.median_rep([5, 1, 3]) == 2
    assert plot.median_rep([4, 1, 3, 2]) == 3
    with pytest.raises(ValueError):
        plot.median_rep([])


def test_bench_scripts_draw_a_phase_with_the_freeze_paths_timeline(tmp_path):
    """``bench/``'s pictures: one series per contender, the timeline of the chosen contender's median rep."""
    stamps = [
        {
            "mount_point": mp,
            "preflush_at_ns": -3_000_000,
            "preflush_ns": 1_000_000,
            "freeze_at_ns": i * 100_000,
            "freeze_ns": 100_000,
            "thaw_at_ns": 400_000,
            "thaw_ns": 50_000,
        }
        for i, mp in enumerate(("/x", "/y"))
    ]
    samples = {
        "floor": [{"window_ns": 80_000_000}, {"window_ns": 70_000_000}],
        "freeze_path": [{"window_ns": w, "filesystems": stamps} for w in (450_000, 500_000)],
        "qemu_ga": [{"window_ns": 90_000_000}, {"window_ns": 95_000_000}],
    }
    labels = {"floor": "floor (C)", "freeze_path": "Freeze path", "qemu_ga": "qemu-ga"}
    name = bench_results.draw_phase(tmp_path, "cw-cold", "title", samples, labels, "freeze_path")
    assert name == "cw-cold.svg"
    path = tmp_path / name
    assert len(svg_ids(path, "dist-")) == 3
    assert {"floor (C)", "Freeze path", "qemu-ga", "/x", "/y"} <= set(svg_texts(path))
    assert len([b for b in svg_ids(path, "span-") if not b.endswith("-zoom")]) == 8


def test_bench_scripts_plot_where_the_results_go(tmp_path, monkeypatch, capsys):
    """By default next to the results file; --no-plot and --no-results draw nothing; --plot DIR wins."""
    parser = argparse.ArgumentParser()
    bench_results.add_output_arguments(parser)
    results_file = tmp_path / "RESULTS.md"
    assert bench_results.plot_dir(parser.parse_args(["--results", str(results_file)])) == tmp_path
    assert bench_results.plot_dir(parser.parse_args(["--no-results"])) is None
    assert bench_results.plot_dir(parser.parse_args(["--no-plot"])) is None
    other = tmp_path / "pics"
    other.mkdir()
    assert bench_results.plot_dir(parser.parse_args(["--no-results", "--plot", str(other)])) == other
    with pytest.raises(SystemExit, match="not a directory"):
        bench_results.plot_dir(parser.parse_args(["--plot", str(tmp_path / "missing")]))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert bench_results.plot_dir(parser.parse_args(["--results", str(results_file)])) is None
    assert "quiesce[plot]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"quiesce\[plot\]"):
        bench_results.plot_dir(parser.parse_args(["--plot", str(other)]))
