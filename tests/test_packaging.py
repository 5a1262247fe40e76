"""House rules that keep the SDK shippable: import direction, lazy toolchains, CLI help."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(pkg: str) -> set[str]:
    names = set()
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_device_sdk_imports_no_torch_cloud_or_simulator():
    assert not _imports("device_sdk") & {"torch", "cloud", "simulator", "converters", "compression", "flask"}


def test_device_sdk_loads_without_torch_in_the_process():
    code = ("import sys, device_sdk.reranker, device_sdk.model_manager, device_sdk.wire, device_sdk.impression_log;"
            "bad = [m for m in ('torch', 'cloud', 'simulator', 'pyarrow', 'flask') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cloud_serving_does_not_import_torch_or_simulator():
    code = ("import sys, cloud.app, cloud.serve;"
            "bad = [m for m in ('torch', 'simulator') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("sub", ["", "demo", "simulate", "train", "export", "serve"])
def test_every_subcommand_has_help(sub):
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", *([sub] if sub else []), "--help"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "usage: edge-rerank" in r.stdout


def test_export_with_a_missing_checkpoint_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", "export", "--checkpoint", str(tmp_path / "x"),
                        "--logs", "y", "--format", "tflite"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--checkpoint" in r.stderr and "no such file" in r.stderr


def test_ruff_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff ([dev] extra) not installed")
    r = subprocess.run([str(ruff), "check", "."], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:]
