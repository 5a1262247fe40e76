"""torch -> Core ML ``.mlpackage`` (ML program, fp32) with coremltools, shipped zipped in the bundle.

coremltools converts and saves on Linux; *prediction* needs macOS. Off macOS we check the converted
program's structure (input/output names, shapes, dtypes against the spec; every op in a known-good set) and
leave numeric parity to the macOS test.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_rerank.converters.specs import ExportSpec, ToolchainMissing

# MIL ops the device reranker lowers to (coremltools 9, torch.jit.trace frontend). Anything else means the
# model or the toolchain changed: review it (e.g. an op without Neural Engine support) before shipping.
EXPECTED_OPS = frozenset({"const", "linear", "gather", "add", "expand_dims", "sub", "mul", "split", "matmul",
                          "concat", "softmax", "slice_by_index", "tile", "relu", "reshape", "transpose",
                          "squeeze", "layer_norm", "real_div", "cast",
                          "reduce_sum", "clip", "identity"})  # (the residual on the cloud score)
_DTYPES = {"int32": "INT32", "float32": "FLOAT32"}
MIN_TARGET = "iOS16"


def _ct():
    try:
        import coremltools as ct
    except ImportError as exc:
        raise ToolchainMissing("Core ML export needs coremltools: pip install 'edge-rerank[coreml]'") from exc
    return ct


def is_macos() -> bool:
    return sys.platform == "darwin"


def export_coreml(model, example: dict[str, np.ndarray], path: str | Path, spec: ExportSpec):
    """Trace `model` on the real batch-1 `example`, convert to an fp32 ML program and save `path`
    (a ``.mlpackage`` directory). Returns the ``ct.models.MLModel``."""
    ct = _ct()
    import torch

    spec.check_inputs(example)
    names = spec.input_names
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in names)
    model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, args)
    inputs = [ct.TensorType(name=s.name, shape=s.shape, dtype=np.dtype(s.dtype).type) for s in spec.inputs]
    mlmodel = ct.convert(traced, inputs=inputs, outputs=[ct.TensorType(name=o.name) for o in spec.outputs],
                         convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                         minimum_deployment_target=getattr(ct.target, MIN_TARGET))
    save_package(mlmodel, path)
    return mlmodel


def save_package(mlmodel, path: str | Path) -> Path:
    """Save an ML program as `path` (.mlpackage), replacing what is there."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def zip_package(package: str | Path, zip_path: str | Path) -> Path:
    """Zip a ``.mlpackage`` directory deterministically (sorted names, fixed timestamps) so its sha256 is
    stable for the same model."""
    package, zip_path = Path(package), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in package.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(str(Path(package.name) / f.relative_to(package)), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, f.read_bytes())
    return zip_path


@dataclass
class StructureReport:
    inputs: list[tuple[str, list[int], str]]
    outputs: list[str]
    op_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def unexpected_ops(self) -> list[str]:
        return sorted(set(self.op_counts) - EXPECTED_OPS)


def check_structure(mlmodel, spec: ExportSpec) -> StructureReport:
    """Compare the converted model's interface with the spec and list its MIL ops."""
    ct = _ct()
    desc = mlmodel.get_spec().description
    ft = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    got_inputs = [(i.name, list(i.type.multiArrayType.shape), ft.ArrayDataType.Name(i.type.multiArrayType.dataType))
                  for i in desc.input]
    got_outputs = [o.name for o in desc.output]
    problems = []
    want = [(s.name, list(s.shape), _DTYPES[s.dtype]) for s in spec.inputs]
    if got_inputs != want:
        diff = [f"{g} != {w}" for g, w in zip(got_inputs, want, strict=False) if g != w][:3]
        problems.append(f"inputs differ from the spec ({len(got_inputs)} vs {len(want)}): {diff}")
    if got_outputs != spec.output_names:
        problems.append(f"outputs {got_outputs} != spec {spec.output_names}")
    ops: dict[str, int] = {}
    prog = getattr(mlmodel, "_mil_program", None)
    if prog is None:
        problems.append("no MIL program attached to the model (load it from the converter, not from disk)")
    else:
        for fn in prog.functions.values():
            for op in fn.operations:
                ops[op.op_type] = ops.get(op.op_type, 0) + 1
    rep = StructureReport(inputs=got_inputs, outputs=got_outputs, op_counts=ops, problems=problems)
    if rep.unexpected_ops:
        problems.append(f"ops outside the reviewed set: {rep.unexpected_ops}")
    return rep
