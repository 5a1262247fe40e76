"""House rules that keep the SDK shippable: import direction, lazy toolchains, CLI help."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _top(module: str) -> str:
    """'edge_rerank.cloud.app' -> 'cloud' (the project's package), 'torch.nn' -> 'torch'."""
    parts = module.split(".")
    return parts[1] if parts[0] == "edge_rerank" and len(parts) > 1 else parts[0]


def _imports(pkg: str) -> set[str]:
    names = set()
    for f in (ROOT / pkg).rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names.update(_top(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(_top(node.module))
                if node.module == "edge_rerank":
                    names.update(a.name for a in node.names)
    return names


def test_device_sdk_imports_no_torch_cloud_or_simulator():
    assert not _imports("device_sdk") & {"torch", "cloud", "simulator", "converters", "compression", "flask"}


def test_device_sdk_loads_without_torch_in_the_process():
    code = ("import sys, edge_rerank.device_sdk.reranker, edge_rerank.device_sdk.model_manager, "
            "edge_rerank.device_sdk.wire, edge_rerank.device_sdk.impression_log;"
            "bad = [m for m in ('torch', 'edge_rerank.cloud', 'edge_rerank.simulator', 'pyarrow', 'flask') "
            "if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cloud_serving_does_not_import_torch_or_simulator():
    code = ("import sys, edge_rerank.cloud.app, edge_rerank.cloud.serve;"
            "bad = [m for m in ('torch', 'edge_rerank.simulator') if m in sys.modules]; print(bad);"
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("sub", ["", "demo", "simulate", "train", "eval", "export", "compress", "ablate", "serve",
                                 "logs", "replay"])
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


def test_packages_list_covers_every_package_folder():
    """pyproject lists the packages explicitly (the folders map into the edge_rerank namespace): none forgotten."""
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = set()
    for top in ("edge_rerank", "device_sdk", "cloud", "converters", "compression", "simulator"):
        for init in (ROOT / top).rglob("__init__.py"):
            mod = ".".join(init.parent.relative_to(ROOT).parts)
            found.add(mod if top == "edge_rerank" else f"edge_rerank.{mod}")
    data_only = {"edge_rerank.replay_assets"}  # files, no code: listed with their package-data
    assert found == listed - data_only and data_only <= listed and data_only <= set(cfg["package-data"])


_SHADOW = """
import sys, pathlib, tempfile
d = pathlib.Path(tempfile.mkdtemp())
for name in ("compression", "cloud", "simulator", "converters", "device_sdk"):
    (d / name).mkdir()
    (d / name / "__init__.py").write_text("SHADOW = True")
sys.path.insert(0, str(d))  # ahead of everything, as the standard library's own `compression` is on 3.14
import compression  # the shadow (stdlib's on 3.14)
assert getattr(compression, "SHADOW", False)
from edge_rerank.compression.presets import PRESETS
from edge_rerank.device_sdk import RerankSession
from edge_rerank.simulator.world import World
print("ok", len(PRESETS))
"""


def test_imports_survive_top_level_names_taken_by_others(tmp_path):
    """On Python 3.14 the standard library has a top-level `compression` package (PEP 784), and any other
    distribution may ship `cloud` or `simulator`: ours live under `edge_rerank.` and are not shadowed."""
    r = subprocess.run([sys.executable, "-c", _SHADOW], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_the_wheel_installs_one_top_level_package(tmp_path):
    """The built wheel holds `edge_rerank/` only (no top-level `compression`, `cloud`, ...) and ships py.typed."""
    import zipfile

    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    import shutil

    had_build = (ROOT / "build").exists()
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True)
    finally:
        if not had_build:  # setuptools builds in the source tree: leave it as it was
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = tmp_path.glob("edge_rerank-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert {n.split("/")[0] for n in names} == {"edge_rerank", whl.name.split("-py3")[0] + ".dist-info"}
    for pkg in ("device_sdk", "cloud", "converters", "compression", "simulator"):
        assert f"edge_rerank/{pkg}/__init__.py" in names
    assert "edge_rerank/device_sdk/py.typed" in names and "edge_rerank/device_sdk/_proto/edge_rerank_pb2.py" in names
    assert {f"edge_rerank/replay_assets/replay.{ext}" for ext in ("html", "css", "js")} <= set(names)


def test_one_version_and_global_flags_after_the_subcommand():
    import importlib.metadata

    from edge_rerank import __version__
    from edge_rerank.cli import build_parser
    from edge_rerank.device_sdk import __version__ as sdk_version

    assert importlib.metadata.version("edge-rerank") == __version__ == sdk_version
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"edge-rerank {__version__}"
    p = build_parser()
    logs = str(ROOT)  # any existing path: --logs is checked at parse time
    assert p.parse_args(["train", "--logs", logs, "--no-progress"]).no_progress is True
    assert p.parse_args(["--no-progress", "train", "--logs", logs]).no_progress is True
    assert p.parse_args(["train", "--logs", logs]).no_progress is False


@pytest.mark.parametrize("args,message", [
    (["train", "--logs", "{tmp}/none"], "no such file or directory"),
    (["eval", "{tmp}/none", "--logs", "{tmp}"], "no such file or directory"),
    (["simulate", "--bundle", "{tmp}", "--out", "{tmp}/o"], "not a bundle directory"),
    (["export", "--checkpoint", "{tmp}", "--logs", "y", "--validate-lists", "0"], "must be at least 1"),
    (["compress", "--preset", "nope", "--checkpoint", "{tmp}/none"], "unknown preset 'nope'"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, args, message):
    """Said at once with exit 2 (before a server starts or a model loads), never a traceback."""
    r = subprocess.run([sys.executable, "-m", "edge_rerank.cli", *[a.format(tmp=tmp_path) for a in args]],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o").exists()
