"""The quick demo end to end, as a user runs it: real gunicorn server, HTTP, Parquet, torch, ONNX, A/B."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", "--no-progress", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "A_cloud" in report and "B_device" in report and "QV_CTR" in report
    data = json.loads((out / "report.json").read_text())
    for arm in ("A_cloud", "B_device"):
        q = data["arms"][arm]["qv_ctr"]
        assert q["lo"] <= q["mean"] <= q["hi"]
    assert data["arms"]["B_device"]["latency"]["n"] > 0
    assert data["validation"]["passed"] and data["model_bytes"] > 0
    assert (out / "position_ctr.png").stat().st_size > 10_000
    assert len(list((out / "logs").glob("*.parquet"))) > 0
    manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and len(manifest["files"]) == 2
    # the A/B ran the shipped bundle: the default compression preset within its budget (checked on the model's
    # recorded test lists) — or, when fp16 reorders the quick model's near-ties beyond it, the lossless one, saying so
    shipped = data["shipped"]
    shipped_manifest = json.loads((out / "shipped" / "bundle" / "manifest.json").read_text())
    shipped_bytes = shipped_manifest["sizes"][shipped_manifest["model_file"]]
    assert shipped["ok"] and data["model_bytes"] == shipped_bytes
    if shipped["fallback_from_default"]:
        assert shipped["preset"] == "lossless" and "broke its budget" in shipped["fallback_from_default"]
        assert "default preset was not shipped" in report
    else:
        assert shipped["method"] == "onnx-fp16" and shipped["mean_kendall_tau"] >= 0.99
        assert shipped_bytes < manifest["sizes"][manifest["model_file"]]
    assert data["train"]["split"]["sessions"]["test"] > 0 and data["train"]["test_lists"] > 0
    # the cloud's coarse stage (issue 16): trained on the logs, published to the demo's registry as the stable
    # coarse-ranker, served during the A/B (the demo refuses to run otherwise), and compared without it
    coarse = data["coarse"]
    assert coarse["top_k"] == 100 and 0.0 <= coarse["test"]["auc"] <= 1.0
    state = json.loads((out / "registry" / "coarse-ranker" / "state.json").read_text())
    assert state["stable"] == coarse["version"]
    d = coarse["delta_with_minus_without"]["qv_ctr"]
    assert d["lo"] <= d["mean"] <= d["hi"]
    assert abs(d["mean"] - (coarse["with"]["qv_ctr"]["mean"] - coarse["without"]["qv_ctr"]["mean"])) < 1e-9
    assert coarse["with"]["qv_ctr"]["mean"] == data["arms"]["A_cloud"]["qv_ctr"]["mean"]
    assert "Cloud coarse stage" in report and "with vs without the coarse stage" in report
    assert "test sessions" in report
    # the session replay (issue 20): traces of the first A/B sessions, the page, and the report's link to it
    from edge_rerank.replay_page import extract_json

    assert "](replay.html)" in report
    traces = extract_json((out / "replay.html").read_text())
    assert traces["arms"] == ["A_cloud", "B_device"] and len(traces["sessions"]) == 20
    device_reranks = [e for s in traces["sessions"] for e in s["arms"][1]["events"] if e["k"] == "rerank"]
    assert device_reranks and all(e["scores"] is None or len(e["scores"]) == len(e["window"]) for e in device_reranks)
    assert any(e["scores"] for e in device_reranks)  # the device model's scores, recorded per rerank
