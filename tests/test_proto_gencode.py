"""The checked-in protobuf gencode must match proto/edge_rerank.proto (run `make proto` after editing)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gencode_is_up_to_date(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools ([dev] extra) regenerates gencode")
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                      str(ROOT / "proto/edge_rerank.proto")])
    assert rc == 0
    fresh = (tmp_path / "edge_rerank_pb2.py").read_text()
    assert fresh == (ROOT / "device_sdk/_proto/edge_rerank_pb2.py").read_text(), "run `make proto`"
