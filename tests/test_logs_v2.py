"""Log format v2 (domain-neutral), `edge-rerank logs validate / infer-config`, item-identity operators, on logs
from a non-shop domain written here: a news feed (topic / publisher / language, word count, item vectors, no geo,
no display positions, graded labels click = 1 / long read = 2, the same items re-shown across a session)."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_rerank.cloud.log_tools import infer_config, validate_logs
from edge_rerank.cloud.logs import (
    V1_DECLARATION,
    LogDeclaration,
    LogFormatError,
    LogRowError,
    parse_row_v2,
    read_logs,
    row_to_record_v2,
    write_logs_v2,
)
from edge_rerank.device_sdk.contracts import Context, EventKind, FeedbackEvent, ImpressionRow, PageItem
from edge_rerank.device_sdk.features import FeatureBuilder, FeatureConfig
from edge_rerank.device_sdk.features.config import FieldSpec
from edge_rerank.device_sdk.features.operators import load_feature_config

NEWS = LogDeclaration(categorical=("topic", "publisher", "language"), numeric=("word_count",), vector_dim=8)
KINDS = {"impression": "negative", "long_read": "positive"}
TOPICS = ["politics", "sport", "tech", "culture", "science", "travel", "food", "health"]


def feed_records(n_sessions: int = 60, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(len(TOPICS), 8))
    items = []
    for i in range(150):
        t = int(rng.integers(len(TOPICS)))
        items.append({"item_id": 1000 + i, "topic": TOPICS[t], "publisher": f"pub{int(rng.integers(25))}",
                      "language": ["en", "de", "fr"][int(rng.integers(3))], "t": t,
                      "word_count": float(rng.integers(100, 3000)),
                      "vector": (centroids[t] + 0.3 * rng.normal(size=8)).round(4).tolist()})
    records = []
    for s in range(n_sessions):
        like = int(rng.integers(len(TOPICS)))
        pool = rng.choice(len(items), size=20, replace=False)  # a session's lists re-show its items
        events: list[dict] = []
        skipped: set[int] = set()
        for k in range(5):
            shown = [items[j] for j in rng.choice(pool, size=10, replace=False)]
            cands = []
            for it in shown:
                p = 0.5 if it["t"] == like else 0.05
                p *= 0.2 if it["item_id"] in skipped else 1.0
                grade = 0 if rng.random() > p else (2 if rng.random() < 0.4 else 1)
                fields = {"topic": it["topic"], "publisher": it["publisher"], "language": it["language"],
                          "word_count": it["word_count"]}
                cands.append({"item_id": it["item_id"], "cloud_score": float(rng.normal() + (it["t"] == like)),
                              "vector": it["vector"], "fields": fields, "grade": grade})
            records.append({"request_id": f"s{s}-l{k}", "session_id": f"s{s}", "user_id": f"u{s % 17}",
                            "page_index": k, "candidates": cands, "events": list(events)})
            for c in cands:  # this list's feedback: history of the next lists
                ev = {"item_id": c["item_id"], "fields": c["fields"], "vector": c["vector"]}
                events.append({**ev, "kind": "impression", "ts_ms": len(events)})
                if c["grade"]:
                    events.append({**ev, "kind": "click", "ts_ms": len(events)})
                    if c["grade"] == 2:
                        events.append({**ev, "kind": "long_read", "ts_ms": len(events), "dwell_ms": 90000.0})
                else:
                    skipped.add(c["item_id"])
    return records


@pytest.fixture(scope="module")
def feed_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("feed")
    recs = feed_records()
    write_logs_v2(recs[:150], NEWS, d / "part-a.parquet")
    write_logs_v2(recs[150:], NEWS, d / "part-b.parquet")
    return d


def test_feed_logs_read_as_v2(feed_dir):
    rows = read_logs(feed_dir)
    assert len(rows) == 300
    r = rows[7]
    assert all(c.shown_position == -1 for c in r.candidates)  # unordered
    assert r.rerank_points == [len(r.events)]
    assert {e.name for e in rows[4].events} >= {"impression", "click"}
    assert r.candidates[0].item.attrs["topic"] in TOPICS and r.candidates[0].item.id_embedding.shape == (8,)


def test_validate_feed_logs(feed_dir, capsys):
    from edge_rerank.cli import main

    rep = validate_logs(feed_dir)
    assert rep.ok and rep.rows == 300 and rep.sessions == 60 and rep.unordered_lists == 300
    assert set(rep.field_nulls) == {"topic", "publisher", "language", "word_count"}
    assert rep.unknown_kinds == {"impression": rep.unknown_kinds["impression"], "long_read":
                                 rep.unknown_kinds["long_read"]}  # not named by the default config
    assert main(["logs", "validate", str(feed_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 2 file(s), 300 lists") and "event kind 'impression'" in out


def test_validate_reports_malformed_rows_with_file_row_and_field(tmp_path, capsys):
    from edge_rerank.cli import main

    recs = feed_records(3)
    recs[2]["candidates"][1]["fields"]["word_count"] = None
    recs[4]["candidates"][0]["grade"] = -3
    recs[5]["candidates"] = [{**c, "grade": 0} for c in recs[5]["candidates"]]
    write_logs_v2(recs, NEWS, tmp_path / "p.parquet")
    bad = pa.Table.from_pylist([{"request_id": "x", "session_id": "y", "candidates": [
        {"item_id": 1, "cloud_score": "high", "fields": {"topic": "a"}}]}])
    pq.write_table(bad.replace_schema_metadata({b"edge_rerank.impression_schema": b"2",
                                                b"edge_rerank.declaration": NEWS.to_json().encode()}),
                   tmp_path / "q.parquet")
    rep = validate_logs(tmp_path)
    assert not rep.ok and rep.n_errors == 2
    assert any("p.parquet row 4: candidates[0].grade: must be an int in 0..63" in e for e in rep.errors)
    assert any("q.parquet row 0: candidates[0].cloud_score: must be a finite number" in e for e in rep.errors)
    assert "p.parquet row 5" in rep.no_positive
    assert main(["logs", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("MALFORMED") and "2 malformed row(s)" in out
    with pytest.raises(LogFormatError, match="p.parquet row 4"):
        read_logs(tmp_path)


def test_infer_config_on_feed_logs(feed_dir, tmp_path, capsys):
    from edge_rerank.cli import main

    cfg, summary = infer_config(feed_dir, event_kinds=KINDS)
    spec = {f.name: f for f in cfg.fields}
    assert spec["topic"].mode == "vocab" and set(spec["topic"].vocab) == set(TOPICS)
    assert spec["language"].n == 3 and spec["word_count"].kind == "numeric" and len(spec["word_count"].edges) >= 5
    assert cfg.emb_dim == 8 and cfg.n_max == 10 and cfg.slot_fields == ("topic", "publisher", "language")
    assert "seen:item" in cfg.candidate_ops and "num:word_count" in cfg.candidate_ops
    assert not any(op.startswith("dist") for op in cfg.candidate_ops)  # no geo
    assert cfg.role_of("impression") == "negative" and cfg.role_of("long_read") == "positive"
    assert summary["fields"]["topic"]["distinct"] == len(TOPICS)
    rep = validate_logs(feed_dir, cfg)
    assert rep.ok and rep.unknown_kinds == {} and max(rep.unknown_rates.values()) == 0.0
    out = tmp_path / "f.json"
    assert main(["logs", "infer-config", str(feed_dir), "--out", str(out), "--event-kind", "impression=negative",
                 "--event-kind", "long_read=positive"]) == 0
    assert FeatureConfig.load(out) == cfg
    assert "fingerprint" in capsys.readouterr().out
    # a narrower config: publishers outside the vocabulary are counted and reported
    narrow = FeatureConfig(**{**cfg.to_dict(), "fields": [
        FieldSpec("topic", mode="vocab", vocab=("sport",)), spec["publisher"], spec["language"], spec["word_count"]]})
    rep = validate_logs(feed_dir, narrow)
    assert rep.unknown_rates["topic"] > 0.5 and any("unknown bucket" in w for w in rep.warnings())


def test_training_on_feed_logs_end_to_end(feed_dir, tmp_path):
    from edge_rerank.api import train

    cfg, _ = infer_config(feed_dir, event_kinds=KINDS)
    r = train(feed_dir, tmp_path / "run", feature_config=cfg, epochs=1, progress=False)
    assert r.train_lists > 50 and r.test_lists > 0 and math.isfinite(r.test["ndcg@10"])


def test_unknown_bucket_warning_in_training(feed_dir):
    from edge_rerank.cloud.training.data import build_samples

    cfg, _ = infer_config(feed_dir, event_kinds=KINDS)
    narrow = FeatureConfig(**{**cfg.to_dict(), "fields": [
        FieldSpec("topic", mode="vocab", vocab=("sport",)), *cfg.fields[1:]]})
    with pytest.warns(UserWarning, match="field 'topic'.*unknown bucket"):
        build_samples(read_logs(feed_dir)[:40], narrow, progress=False)


def test_v1_logs_map_to_v2_with_identical_features(logged_rows, fcfg, tmp_path):
    from edge_rerank.cloud.training.data import samples_from_row

    write_logs_v2([row_to_record_v2(r, V1_DECLARATION) for r in logged_rows[:150]], V1_DECLARATION,
                  tmp_path / "a.parquet")
    back = read_logs(tmp_path / "a.parquet")
    b = FeatureBuilder(fcfg)
    n = 0
    for live, stored in zip(logged_rows[:150], back, strict=True):
        for a, c in zip(samples_from_row(live, b), samples_from_row(stored, b), strict=True):
            assert np.array_equal(a.labels, c.labels) and a.point == c.point
            for k in a.features:
                assert a.features[k].tobytes() == c.features[k].tobytes(), k
            n += 1
    assert n > 10


def test_old_configs_load_and_keep_their_fingerprint(tmp_path, fcfg):
    d = fcfg.to_dict()
    assert not {"fields", "event_kinds", "label_gain", "embedding_fields"} & set(d)
    assert fcfg.slot_sizes == (fcfg.n_categories, fcfg.n_brands, fcfg.n_price_levels)
    for bad, match in [({"fields": [{"name": "topic", "mode": "vocab", "vocab": ["a", "a"]}]}, "distinct"),
                       ({"fields": [{"name": "Topic"}]}, "field name"),
                       ({"event_kinds": {"click": "great"}}, "event_kinds"),
                       ({"label_gain": [0, float("nan")]}, "label_gain"),
                       ({"candidate_ops": ["hit:topic:click"]}, "unknown field")]:
        (tmp_path / "c.json").write_text(json.dumps({**d, **bad}))
        with pytest.raises(ValueError, match=match):
            load_feature_config(tmp_path / "c.json")


# ---- properties ------------------------------------------------------------------------------------------

_junk = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=300),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=4), max_leaves=8)


def _mutate(rec: dict, path: list, value) -> dict:
    rec = json.loads(json.dumps(rec))
    node = rec
    for key in path[:-1]:
        node = node[key]
    if value == "__delete__":
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return rec


_BASE = feed_records(1)[3]
_PATHS = [["request_id"], ["session_id"], ["candidates"], ["events"], ["rerank_points"], ["ctx_hour"],
          ["candidates", 0, "item_id"], ["candidates", 0, "grade"], ["candidates", 0, "vector"],
          ["candidates", 0, "fields"], ["candidates", 0, "fields", "topic"], ["candidates", 0, "fields", "word_count"],
          ["candidates", 0, "shown_position"], ["candidates", 0, "cloud_score"], ["candidates", 0, "label_step"],
          ["events", 0, "kind"], ["events", 0, "dwell_ms"], ["events", 0, "fields", "nope"], ["events", 0, "vector"],
          ["events", 0, "item_id"], ["candidates", 0, "exposed"]]


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(_PATHS), value=_junk | st.just("__delete__") | st.just(float("nan"))
       | st.just(list(range(5000))) | st.text(min_size=1, max_size=64))
def test_property_v2_parser_accepts_or_names_the_field(path, value):
    rec = _mutate(_BASE, path, value) if "nan" not in repr(value) else _BASE | {"ctx_lat": value}
    try:
        row = parse_row_v2(rec, NEWS)
    except LogRowError as exc:
        assert str(exc) and len(str(exc)) < 400
        return
    assert isinstance(row, ImpressionRow) and row.candidates
    for c in row.candidates:
        assert c.grade >= 0 and c.item.id_embedding.size in (0, 8) and np.isfinite(c.item.cloud_score)
    for e in row.events:  # an unknown kind is carried by name; the features treat it as neutral
        assert isinstance(e.name, str) and e.dwell_ms >= 0
    cfg = FeatureConfig(emb_dim=8, n_max=64, fields=(FieldSpec("topic", mode="hash", size=16),),
                        candidate_ops=("cloud_score", "seen:item", "hit:topic:seen", "sim_max:click"))
    out = FeatureBuilder(cfg).build([c.item for c in row.candidates], row.events, row.context)
    assert np.all(np.isfinite(out["cand_num"]))


def _item(i: int, topic: str) -> PageItem:
    return PageItem(item_id=i, cloud_position=0, cloud_score=0.0, cloud_dense=np.zeros(0), id_embedding=np.zeros(0),
                    category=-1, brand=-1, price_level=-1, lat=0.0, lon=0.0, attrs={"topic": topic})


@settings(max_examples=80, deadline=None)
@given(history=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["impression", "click", "long_read", "poke"]),
                                  st.floats(0, 5000)), max_size=40))
def test_property_identity_operators_match_a_brute_force_count(history):
    cfg = FeatureConfig(emb_dim=4, dense_dim=4, l_max=8, max_positives=4, dwell_threshold_ms=1000.0,
                        fields=(FieldSpec("topic", mode="vocab", vocab=("a", "b")),),
                        event_kinds=(("impression", "negative_dwell"), ("click", "positive"),
                                     ("long_read", "positive_dwell")),
                        candidate_ops=("seen:item", "skipped:item", "clicked:item", "dwell_max:item",
                                       "hit:item:click", "step:item:seen", "hit:topic:seen", "freq:item+topic:seen"))
    topic = {i: "ab"[i % 2] for i in range(6)}
    events = [FeedbackEvent(ts_ms=k, request_id="r", item_id=i, kind=EventKind.EXPOSURE, dwell_ms=d, kind_name=kd,
                            attrs={"topic": topic[i]}) for k, (i, kd, d) in enumerate(history)]
    out = FeatureBuilder(cfg).build([_item(i, topic[i]) for i in range(6)], events, Context())["cand_num"][:6]
    pos_items = {i for i, kd, d in history if kd == "click" or (kd == "long_read" and d >= 1000)}
    shown = [(i, d) for i, kd, d in history if kd == "impression"]
    for i in range(6):
        seen = sum(j == i for j, _ in shown)
        skipped = 0 if i in pos_items else sum(j == i and d >= 1000 for j, d in shown)
        clicked = sum(j == i and (kd == "click" or (kd == "long_read" and d >= 1000)) for j, kd, d in history)
        dwell = max([d for j, _, d in history if j == i], default=0.0)
        np.testing.assert_allclose(out[i, :4], np.float32([math.log1p(seen), math.log1p(skipped),
                                                           math.log1p(clicked), math.log1p(dwell / 1000)]), rtol=1e-6)
        last_clicks = [j for j, kd, d in history if kd == "click" or (kd == "long_read" and d >= 1000)][-4:]
        assert out[i, 4] == float(i in last_clicks)  # Match&Aggregate sees the max_positives latest clicks
        ranks = [k for k, (j, _) in enumerate(reversed(shown), 1) if j == i]
        assert out[i, 5] == pytest.approx(min(ranks[0] / cfg.l_max, 1.0) if ranks else 1.0)
        assert out[i, 6] == float(any(topic[j] == topic[i] for j, _ in shown))
        assert out[i, 7] == pytest.approx(seen / len(shown) if shown else 0.0)
