"""How the reports read (issue 19): the formatting helpers (% for rates, pp for their differences, — for n/a,
caveats below the stated thresholds) and every plot function writing a PNG from a small input without a warning
(no tight_layout / missing glyph / layout warnings), labels that do not overlap."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_rerank import report_format as rf
from edge_rerank.simulator.session_metrics import Estimate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 10_000


# ---------------------------------------------------------------- formatting


def test_rate_is_percent_and_its_difference_is_percentage_points():
    assert rf.rate(Estimate(0.718, 0.676, 0.754)) == "71.80 % [67.60, 75.40]"
    assert rf.rate_delta(Estimate(0.036, 0.008, 0.062)) == "+3.60 pp [0.80, 6.20]"
    assert rf.rate_delta(Estimate(-0.01, -0.034, 0.012)) == "−1.00 pp [−3.40, 1.20]"
    assert rf.pp((1.27, 0.47, 2.2)) == "+1.27 pp [0.47, 2.20]"
    # a difference of rates never reads as a percentage
    assert "%" not in rf.rate_delta(Estimate(0.036, 0.008, 0.062))


def test_non_rate_values_and_deltas():
    assert rf.ci({"mean": 1.5301, "lo": 1.482, "hi": 1.576}, digits=3) == "1.530 [1.482, 1.576]"
    assert rf.delta(Estimate(0.123, 0.095, 0.150), 3) == "+0.123 [0.095, 0.150]"
    assert rf.delta(Estimate(-0.09, -0.16, -0.02), 2) == "−0.09 [−0.16, −0.02]"
    assert rf.delta(Estimate(1.7, 1.0, 2.5), 1, unit="mJ") == "+1.7 mJ [1.0, 2.5]"
    assert rf.num(-0.0001, 2) == "0.00" and rf.num(0.0, 2, signed=True) == "0.00"  # no −0.00 / +0.00


@pytest.mark.parametrize("missing", [None, float("nan"), float("inf"), {}, Estimate(float("nan"), 0.0, 1.0)])
def test_not_applicable_is_an_em_dash(missing):
    for fmt in (rf.rate, rf.rate_delta, rf.pp, lambda e: rf.delta(e, 3), lambda e: rf.ci(e)):
        assert fmt(missing if not isinstance(missing, float) else (missing, missing, missing)) == rf.NA
    assert rf.num(None) == rf.NA and rf.num(float("nan")) == rf.NA
    assert rf.pair(float("nan"), float("nan")) == rf.NA  # a cloud arm's p50 / p99 latency
    assert rf.pair(1.5, float("nan")) == "1.50 / —"
    assert rf.table(["a", "b"], [[None, float("nan")]])[-1] == "| — | — |"


def test_point_without_interval_prints_the_point_only():
    assert rf.pp((0.5, None, None)) == "+0.50 pp"


def test_table_is_a_markdown_table_and_escapes_pipes():
    lines = rf.table(["arm", "click_return"], [["B", "1,234"], ["a|b", 0], ["failed: x\ny", ""]])
    assert lines[0] == "| arm | click_return |" and lines[1] == "|---|---|"
    assert lines[3] == "| a\\|b | 0 |" and lines[4] == "| failed: x y | — |"
    assert all(line.count("|") - line.count("\\|") == 3 for line in lines)


@given(st.floats(-1, 1, allow_nan=False), st.floats(0, 0.5, allow_nan=False), st.floats(0, 0.5, allow_nan=False))
def test_interval_reads_back(mean, below, above):
    """Any (mean, lo, hi) reads back to the rounded numbers, in that order, with one sign convention."""
    s = rf.rate_delta(Estimate(mean, mean - below, mean + above))
    head, rest = s.split(" pp [")
    lo, hi = rest.rstrip("]").split(", ")
    back = [float(x.replace(rf.MINUS, "-")) for x in (head, lo, hi)]
    assert back == pytest.approx([100 * mean, 100 * (mean - below), 100 * (mean + above)], abs=0.006)
    assert "-" not in s  # U+2212 only
    assert head.startswith(("+", rf.MINUS)) or float(head) == 0


@pytest.mark.parametrize("n", [1, 150, 500, rf.FEW_SESSIONS - 1])
def test_sessions_caveat_below_the_threshold(n):
    line = rf.sessions_caveat(n, delta_halfwidth_pp=2.34)
    assert line is not None and f"{n:,} sessions per arm" in line and f"under {rf.FEW_SESSIONS:,}" in line
    assert "±2.3 pp" in line


@pytest.mark.parametrize("n", [rf.FEW_SESSIONS, 4000, 100_000])
def test_no_sessions_caveat_at_or_above_the_threshold(n):
    assert rf.sessions_caveat(n) is None


def test_lists_caveat_threshold_and_standard_error():
    assert rf.lists_caveat(rf.FEW_LISTS) is None and rf.lists_caveat(2270) is None
    line = rf.lists_caveat(100)
    assert line is not None and "100 held-out lists" in line
    assert "0.030" in line  # 0.3 / sqrt(100): the standard error it quotes follows from the stated per-list SD
    assert rf.caveats(None, line, None) == [line, ""]


# ---------------------------------------------------------------- plots (and the reports they come with)


@pytest.fixture(scope="module")
def small_ab(world, inproc_cloud):
    """A real A/B on the small test world: cloud order, the heuristic (a reranker with latencies) and the
    informed oracle (so the gap-share row appears), 60 sessions per arm."""
    from edge_rerank.simulator.ab import run_ab
    from edge_rerank.simulator.arms import ArmSpec, build_arm
    from edge_rerank.simulator.user_model import UserModel

    um = UserModel(world)
    arms = [build_arm(ArmSpec(n, n), um) for n in ("cloud", "heuristic", "informed")]
    return run_ab(um, inproc_cloud, arms, 60, seed=3, progress=False)


def test_ab_report_reads_as_issue_19_asks(small_ab, tmp_path):
    from edge_rerank.simulator.report import write_report

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = write_report(tmp_path, small_ab, title="small", seed=0)
    md = (tmp_path / "report.md").read_text()
    _png(tmp_path / "position_ctr.png")
    _png(tmp_path / "latency.png")
    assert data["small_sample"] and "**Small sample: 60 sessions per arm**" in md
    assert "nan" not in md.lower() and "None" not in md and "{" not in md and "Counter" not in md
    qv = next(line for line in md.splitlines() if line.startswith("| QV_CTR"))
    cells = [c.strip() for c in qv.strip("|").split("|")]
    assert all(c.split(" [")[0].endswith(" %") for c in cells[1:4])  # levels in %
    assert all(c.split(" [")[0].endswith(" pp") for c in cells[4:])  # differences in pp
    rerank = next(line for line in md.splitlines() if line.startswith("| cloud | 0 |"))
    assert rerank.count(rf.NA) == 4  # no reranker: applied, dropped and both latencies do not apply
    assert "| arm | click_return |" in md  # triggers as a table, one column per kind


def test_ab_report_without_caveat_at_or_above_the_threshold(small_ab, tmp_path, monkeypatch):
    """The caveat follows the session count: the same 60-session report with the threshold at 60 has none."""
    from edge_rerank.simulator import report

    monkeypatch.setattr(rf, "FEW_SESSIONS", 60)
    report.write_report(tmp_path, small_ab, title="t", seed=0)
    assert "Small sample" not in (tmp_path / "report.md").read_text()


def test_latency_plot_skipped_without_reranks(small_ab, tmp_path):
    from edge_rerank.simulator.report import _plot_latency

    assert not _plot_latency(small_ab[:1], tmp_path / "latency.png")
    assert not (tmp_path / "latency.png").exists()


def _ablation_data(n_test: int = 150) -> dict:
    rng = np.random.default_rng(0)

    def est(m: float, w: float) -> dict:
        return {"mean": m, "lo": m - w, "hi": m + w}

    names = ["cloud order", "heuristic", "LightGBM lambdarank", "PRM, no feedback", "+ Match&Aggregate",
             "M&A + residual on the cloud score (default)", "MVFAN, id view only"]
    rows = []
    for i, name in enumerate(names):
        offline = {"ndcg@5": 0.2 + 0.04 * i, "ndcg@10": 0.31 + 0.03 * i + 0.01 * rng.random(), "mrr": 0.3}
        online = None
        if name == "cloud order":
            online = {"qv_ctr": est(0.66, 0.07)}
        elif name != "MVFAN, id view only":
            online = {"qv_ctr": est(0.67, 0.07), "delta_qv_ctr": est(0.01 * (i - 3), 0.05),
                      "delta_clicks": est(0.05, 0.1)}
        rows.append({"name": name, "offline": offline, "online": online, "note": "", "params": 1000 * i or None})
    return {"samples": {"test_lists": n_test, "train_lists": 900, "valid_lists": 190},
            "config": {"log_sessions": 700, "ab_sessions": 150}, "rows": rows,
            "online": {"joint_cloud_only_delta_qv_ctr": est(-0.02, 0.05)}}


def test_ablation_table_and_plot(tmp_path):
    from edge_rerank.ablation import plot, to_markdown

    data = _ablation_data()
    md = to_markdown(data)
    assert "150 held-out test lists" in md and "150 sessions per arm" in md  # both caveats
    assert "pp [" in md and "nan" not in md and "–" not in md  # en dash no longer stands for n/a
    assert "| MVFAN, id view only | 0." in md and md.count(rf.NA) >= 4
    assert "ΔQV_CTR vs the original cloud order −2.00 pp [−7.00, 3.00]" in md
    big = _ablation_data(n_test=2000)
    big["config"]["ab_sessions"] = 4000
    assert "Small sample" not in to_markdown(big)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot(data, tmp_path / "ablation.png")
    _png(tmp_path / "ablation.png")


def test_offline_only_ablation_has_one_panel_and_no_online_caveat(tmp_path, monkeypatch):
    import matplotlib.figure

    from edge_rerank.ablation import plot, to_markdown

    data = _ablation_data()
    for r in data["rows"]:
        r["online"] = None
    data["online"] = {}
    md = to_markdown(data)
    assert "Online: not run" in md and "sessions per arm" not in md and "held-out test lists** (few" in md
    panels = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (panels.append(len(self.axes)), real(self, *a, **k)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot(data, tmp_path / "ablation.png")
    assert panels == [1]
    _png(tmp_path / "ablation.png")


def test_ablation_plot_offline_axis_starts_at_zero(tmp_path, monkeypatch):
    """Bars compare sizes: the NDCG@10 axis starts at 0 (it started near the smallest bar before issue 19)."""
    import matplotlib.figure

    from edge_rerank.ablation import plot

    seen = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (seen.append([ax.get_xlim() for ax in self.axes]), real(self, *a, **k)))
    plot(_ablation_data(), tmp_path / "a.png")
    (left, _), (lo, hi) = seen[0]
    assert left == 0.0 and lo < 0 < hi  # differences are centred on zero


def _method_rows(n_clustered: int = 6):
    """Compression results with the crowding the real benchmark has: several methods of the same size and near
    the same NDCG@10 / τ (int8 variants), coincident points (same file size and score), outliers."""
    from edge_rerank.compression.benchmark import MethodResult
    from edge_rerank.compression.methods import METHODS

    rng = np.random.default_rng(1)
    rows = []
    for i, m in enumerate(METHODS):
        kb = 75.5 if i < n_clustered else float(rng.choice([173.5, 97.1, 120.0, 45.0, 33.7]) * (1 + 0.02 * i))
        rows.append(MethodResult(m.name, m.format, m.family, file_kb=kb, gzip_kb=kb / 2, max_abs_diff=0.1,
                                 min_kendall_tau=0.5, mean_kendall_tau=0.985 if i < 3 else float(rng.uniform(0.7, 1)),
                                 ndcg10=0.552 + (0.0 if i < 2 else float(rng.normal(0, 0.002))), ndcg10_delta=0.0,
                                 ndcg10_rel_delta_pct=0.0, n_lists=300, latency_p50_ms=0.1 if i % 3 else None))
    rows[1].status, rows[1].reason = "unavailable", "needs the [coreml] extra"
    return rows


def test_pareto_plot_labels_do_not_overlap(tmp_path):
    from edge_rerank.compression_report import pareto_plot

    rows = _method_rows()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        placed = pareto_plot(rows, tmp_path / "pareto.png")
    _png(tmp_path / "pareto.png")
    assert placed is not None and not placed.unplaced
    boxes = placed.boxes
    n_ok = sum(r.status == "ok" for r in rows)
    assert n_ok < len(boxes) <= 2 * n_ok  # coincident points share a label, so fewer boxes than points
    for side in (boxes[: len(boxes) // 2], boxes[len(boxes) // 2:]):
        for i, a in enumerate(side):
            for b in side[i + 1:]:
                assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1]), (a, b)


def test_compression_outputs(tmp_path):
    """write_outputs: the table reads as the other reports (pp, —, units, caveats), the JSON keeps the counts the
    caveats come from, the plot is written."""
    from edge_rerank.compression_report import write_outputs

    rows = _method_rows()
    rows[0].qv_ctr_delta_pp, rows[0].qv_ctr_ci_pp, rows[0].qv_ctr_sessions = 0.05, (0.0, 0.12), 500
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_outputs(rows, tmp_path)
    md = (tmp_path / "compression.md").read_text()
    assert "300 held-out lists" in md and "500 sessions per arm" in md and md.count("Small sample") == 2
    assert "+0.05 pp [0.00, 0.12]" in md and "nan" not in md and "None" not in md
    unavailable = next(line for line in md.splitlines() if "unavailable" in line)
    assert unavailable.count(rf.NA) == 6
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "KB" in header and "ms" in header and "95 % CI" in header
    saved = json.loads((tmp_path / "compression.json").read_text())["results"]
    assert saved[0]["n_lists"] == 300 and saved[0]["qv_ctr_sessions"] == 500
    _png(tmp_path / "pareto.png")
