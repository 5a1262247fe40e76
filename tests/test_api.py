"""The notebook-facing entry points (issue 13 point 2): edge_rerank.api imports no web stack, and the documented
train -> export -> compress example runs as written."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "train_export_compress.py"


def test_api_imports_no_flask_gunicorn_or_torch():
    code = ("import sys, edge_rerank.api;"
            "bad = [m for m in ('flask', 'gunicorn', 'torch', 'edge_rerank.cloud.app', 'edge_rerank.pipeline') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_python_api_example_runs_as_written(logged_rows, tmp_path, monkeypatch, capsys):
    from edge_rerank.cloud.logs import rows_to_table

    lines = EXAMPLE.read_text().splitlines()
    assert len(lines) <= 15
    assert EXAMPLE.read_text().strip() in (ROOT / "README.md").read_text(), "README's example drifted from the file"
    (tmp_path / "logs").mkdir()
    pq.write_table(rows_to_table(logged_rows), tmp_path / "logs" / "part-0.parquet")
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(EXAMPLE))
    out = capsys.readouterr().out
    assert "test NDCG@10" in out and "ndcg@10" in out
    trained, exported, shipped = ns["trained"], ns["exported"], ns["shipped"]
    assert trained.split["seed"] == 1 and trained.test_lists > 0
    assert exported.ok and (tmp_path / "run" / "export" / "onnx" / "manifest.json").is_file()
    assert shipped.method == "onnx-fp16" and (tmp_path / "run" / "shipped" / "bundle" / "manifest.json").is_file()


def test_cli_train_export_compress_call_the_api():
    """The CLI only parses and prints: its train / export / compress / eval handlers go through edge_rerank.api."""
    src = (ROOT / "edge_rerank" / "cli.py").read_text()
    for fn in ("train", "export", "compress", "compress_benchmark", "evaluate", "load_held_out"):
        assert f"from edge_rerank.api import {fn}" in src, fn
    for internal in ("split_by_session", "build_samples", "run_preset", "export_formats", "run_benchmark"):
        assert internal not in src, internal
