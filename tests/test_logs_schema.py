import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from edge_rerank.cloud.logs import CANDIDATE, EVENT, IMPRESSION_SCHEMA, LogSink, read_logs, rows_to_table, table_to_rows

DOC = Path(__file__).resolve().parents[1] / "docs" / "impression_log_schema.md"


def test_roundtrip_through_parquet(logged_rows, tmp_path):
    sink = LogSink(tmp_path)
    sink.append(logged_rows[:40])
    sink.append(logged_rows[40:80])
    back = read_logs(tmp_path)
    assert len(back) == 80
    a, b = logged_rows[3], [r for r in back if r.request_id == logged_rows[3].request_id][0]
    assert (a.session_id, a.query, a.page_index, a.rerank_points) == (b.session_id, b.query, b.page_index,
                                                                      b.rerank_points)
    for ca, cb in zip(a.candidates, b.candidates, strict=True):
        assert (ca.item.item_id, ca.shown_position, ca.clicked, ca.first_exposure_step) == \
               (cb.item.item_id, cb.shown_position, cb.clicked, cb.first_exposure_step)
        assert np.array_equal(ca.item.id_embedding, cb.item.id_embedding)
    assert [e.kind for e in a.events] == [e.kind for e in b.events]
    assert not list(tmp_path.glob(".*.tmp"))
    assert pq.read_schema(next(tmp_path.glob("*.parquet"))).metadata[b"edge_rerank.impression_schema"] == b"1"


def test_rows_are_self_consistent(logged_rows):
    """first_exposure_step / click_step point at that item's events; rerank points index into events."""
    from edge_rerank.device_sdk.contracts import EventKind

    for row in logged_rows:
        assert all(0 <= p <= len(row.events) for p in row.rerank_points)
        for c in row.candidates:
            if c.exposed:
                e = row.events[c.first_exposure_step]
                assert e.kind == EventKind.EXPOSURE and e.item_id == c.item.item_id
            if c.clicked:
                e = row.events[c.click_step]
                assert e.kind == EventKind.CLICK and e.item_id == c.item.item_id and c.exposed


def test_doc_lists_every_column():
    """docs/impression_log_schema.md documents exactly the columns the code writes."""
    text = DOC.read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))
    from edge_rerank.cloud.logs import V2_CANDIDATE_KEYS, V2_EVENT_KEYS, V2_ROW_KEYS

    expected = set(IMPRESSION_SCHEMA.names) | {f.name for f in CANDIDATE} | {f.name for f in EVENT}
    expected |= set(V2_ROW_KEYS) | set(V2_CANDIDATE_KEYS) | set(V2_EVENT_KEYS)
    assert documented == expected, (expected - documented, documented - expected)


def test_missing_columns_are_a_clear_error(logged_rows):
    import pytest

    t = rows_to_table(logged_rows[:2]).drop_columns(["events"])
    with pytest.raises(ValueError, match="lacks columns"):
        table_to_rows(t)
