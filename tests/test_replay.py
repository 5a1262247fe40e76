"""Replay traces (simulator/replay.py) and the replay page's writer (edge_rerank/replay_page.py), without a browser:
recording changes no outcome, a trace agrees with itself and with the outcome, it is bounded, the page embeds its
data safely and references nothing outside itself, the CLI writes and serves it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.device_sdk.reranker import reinsert
from edge_rerank.replay_page import build_page, embed_json, extract_json, write_page
from edge_rerank.simulator.ab import Arm
from edge_rerank.simulator.arms import ArmSpec, build_arm
from edge_rerank.simulator.phone import Phone
from edge_rerank.simulator.replay import (
    TRACES_FILE,
    ReplayPhone,
    list_states,
    read_traces,
    record_replays,
    write_traces,
)
from edge_rerank.simulator.user_model import UserModel

ROOT = Path(__file__).resolve().parents[1]
N = 24


@pytest.fixture(scope="module")
def um(world):
    return UserModel(world)


@pytest.fixture(scope="module")
def arms(um) -> list[Arm]:
    return [build_arm(ArmSpec("A_cloud", "cloud"), um), build_arm(ArmSpec("B_heuristic", "heuristic"), um)]


@pytest.fixture(scope="module")
def traces(um, inproc_cloud, arms, world) -> dict:
    return record_replays(um, inproc_cloud, arms, [world.session(i, 5) for i in range(N)])


def _comparable(o) -> dict:
    d = asdict(o)
    d.pop("rerank_ms")  # host wall clock
    return d


@pytest.mark.parametrize("kind", ["cloud", "heuristic", "oracle"])
def test_recording_changes_no_outcome(um, inproc_cloud, world, kind):
    arm = build_arm(ArmSpec(kind, kind), um)
    plain = Phone(um, inproc_cloud, arm=kind, reranker=arm.reranker, triggers=arm.triggers, keep_logs=False,
                  cost_model=arm.cost_model)
    rec = ReplayPhone(um, inproc_cloud, arm=kind, reranker=arm.reranker, triggers=arm.triggers, keep_logs=False,
                      cost_model=arm.cost_model)
    for i in range(N):
        spec = world.session(i, 5)
        assert _comparable(rec.run(spec)) == _comparable(plain.run(spec)), spec.session_id


def test_trace_agrees_with_itself_and_the_outcome(traces):
    """What the page draws (the list folded from page / outcome events) is what the user was shown at each
    reveal; clicks, screens, triggers and applied reranks match the session's outcome."""
    V = traces["viewport_items"]
    n_applied = 0
    for s in traces["sessions"]:
        a, b = s["arms"]
        assert a["events"][0]["k"] == "page" and a["events"][0] == b["events"][0]  # the same first page
        for arm in (a, b):
            o, evs = arm["outcome"], arm["events"]
            assert not arm["truncated"]
            states = list_states(arm)
            reveals = [(e, ids) for e, ids in zip(evs, states, strict=True) if e["k"] == "reveal"]
            assert len(reveals) == o["screens"]
            for k, (e, ids) in enumerate(reveals):
                assert e["start"] == k * V and e["ids"] == ids[e["start"]: e["start"] + len(e["ids"])]
            assert [e["pos"] for e in evs if e["k"] == "click"] == o["click_positions"]
            assert sum(e["k"] == "order" for e in evs) == o["orders"]
            assert sum(e["k"] == "trigger" for e in evs) == sum(o["triggers"].values())
            outcomes = [e for e in evs if e["k"] == "outcome"]
            assert sum(e["status"] in ("applied", "late") for e in outcomes) == o["reranks_applied"]
            assert sum(e.get("moved", 0) for e in outcomes) == o["moved"]
            assert evs[-1]["k"] in ("leave", "outcome")
            ts = [e["t"] for e in evs]
            assert ts == sorted(ts)
            for e in outcomes:  # each outcome follows its request; applied ones carry the new order and moves
                req = next(r for r in evs if r["k"] == "rerank" and r["r"] == e["r"])
                assert req["t"] <= e["t"]
                if "order" in e:
                    n_applied += 1
                    ids = states[evs.index(e)]
                    assert ids[e["start"]:] == e["order"] and len(set(e["order"])) == len(e["order"])
                    assert len(e["moves"]) == e["moved"]  # an applied rerank may move nothing
                    for iid, old, new in e["moves"]:
                        assert old != new and ids[new] == iid
        assert not any(e["k"] in ("rerank", "outcome") for e in a["events"])  # the cloud arm never reranks
    assert n_applied > 0


def test_rerank_scores_order_the_window(traces):
    """The scores a rerank records are the reranker's: sorting the window by them gives the order it applied."""
    checked = 0
    for s in traces["sessions"]:
        evs = s["arms"][1]["events"]
        for e in evs:
            if e["k"] != "outcome" or e["status"] != "applied":
                continue
            req = next(r for r in evs if r["k"] == "rerank" and r["r"] == e["r"])
            assert len(req["scores"]) == len(req["window"])
            order = reinsert(len(req["window"]), 0, len(req["window"]), np.array(req["scores"]))
            # scores are rounded to 3 decimals in the trace: compare where they are not (near-)tied
            ranked = [req["window"][i] for i in order]
            assert ranked[0] == e["order"][0] or abs(sorted(req["scores"])[-1] - sorted(req["scores"])[-2]) < 2e-3
            checked += 1
    assert checked > 0


def test_a_trace_is_bounded(um, inproc_cloud, arms, world, traces):
    small = record_replays(um, inproc_cloud, arms, [world.session(i, 5) for i in range(6)], max_events=12)
    n_truncated = 0
    for s, full in zip(small["sessions"], traces["sessions"], strict=False):
        for arm, whole in zip(s["arms"], full["arms"], strict=True):
            assert arm["events"] == whole["events"][:12] and arm["outcome"] == whole["outcome"]
            assert arm["truncated"] == (len(whole["events"]) > 12)
            n_truncated += arm["truncated"]
    assert n_truncated > 0
    cap = um.cfg.max_pages * traces["page_size"]  # no list in an event is longer than the loaded items
    for s in traces["sessions"]:
        for arm in s["arms"]:
            for e in arm["events"]:
                for v in e.values():
                    assert not isinstance(v, list) or len(v) <= cap
    with pytest.raises(ValueError, match="two arms"):
        record_replays(um, inproc_cloud, arms[:1], [world.session(0, 5)])


def test_session_flags_follow_the_outcomes(traces):
    early = traces["left_early_screens"]
    for s in traces["sessions"]:
        o = [a["outcome"] for a in s["arms"]]
        assert s["has_orders"] == (o[0]["orders"] + o[1]["orders"] > 0)
        assert s["left_early"] == any(not x["exhausted"] and x["screens"] <= early for x in o)
        assert s["outcome_differs"] == (len({(x["clicks"], x["orders"], x["screens"], x["abandoned"]) for x in o}) > 1)
    assert any(s["outcome_differs"] for s in traces["sessions"])


@settings(max_examples=40)
@given(st.text(), st.dictionaries(st.text(max_size=8), st.text(), max_size=3))
def test_embedded_json_comes_back_and_cannot_end_its_script(title, extra):
    doc = {"format": "edge-rerank-replay/1", "sessions": [{"id": "s", "extra": extra}], "arms": ["a", "b"]}
    page = build_page(doc, title=title)
    back = extract_json(page)
    assert back["title"] == title if title else "title" not in back
    assert back["sessions"][0]["extra"] == extra
    data = embed_json(dict(doc, title=title))
    assert "<" not in data and ">" not in data and "&" not in data


def test_page_is_self_contained(traces, tmp_path):
    page = build_page(traces)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", page.replace(embed_json(traces), ""), re.I)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", page)  # only in-page anchors
    assert extract_json(page) == json.loads(json.dumps(traces))
    with pytest.raises(ValueError, match="no sessions"):
        build_page(dict(traces, sessions=[]))


def _write_run(traces, run: Path) -> Path:
    write_traces(traces, run / TRACES_FILE)
    return run


def test_cli_writes_and_serves_the_page(traces, tmp_path):
    from edge_rerank.cli import main

    run = _write_run(traces, tmp_path / "run")
    assert main(["replay", str(run)]) == 0
    page = run / "replay.html"
    assert extract_json(page.read_text())["sessions"] == read_traces(run)["sessions"]
    p = subprocess.Popen([sys.executable, "-m", "edge_rerank.cli", "replay", str(run), "--out",
                          str(tmp_path / "p.html"), "--serve", "--port", "0"], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    try:
        url = None
        for line in p.stdout:
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, "the server did not say where it serves"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.read() == (tmp_path / "p.html").read_bytes()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "etc/passwd", timeout=10)
        assert err.value.code == 404
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_cli_refuses_what_it_cannot_replay(tmp_path, capsys):
    from edge_rerank.cli import main

    assert main(["replay", str(tmp_path)]) == 2
    assert "no replay traces" in capsys.readouterr().err
    (tmp_path / "replay").mkdir()
    (tmp_path / TRACES_FILE).write_text(json.dumps({"format": "something else"}))
    assert main(["replay", str(tmp_path)]) == 2
    assert "not a replay traces file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: a run directory that does not exist
        main(["replay", str(tmp_path / "nope")])
    assert exc.value.code == 2 and "no such file" in capsys.readouterr().err
    assert main(["simulate", "--arms", "cloud", "--replay", "3", "--out", str(tmp_path / "sim")]) == 2
    assert "two arms" in capsys.readouterr().err and not (tmp_path / "sim").exists()


def test_page_default_locations(traces, tmp_path):
    from edge_rerank.cli import main

    run = _write_run(traces, tmp_path / "run")
    assert write_page(run) == run / "replay.html"
    assert main(["replay", str(run / TRACES_FILE)]) == 0  # a traces file: the page goes next to it
    assert extract_json((run / TRACES_FILE).with_suffix(".html").read_text())["sessions"] == traces["sessions"]
