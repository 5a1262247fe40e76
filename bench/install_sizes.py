"""Install size of each extra: the bytes on disk of every distribution ``pip install 'edge-rerank[EXTRA]'`` brings
(the core's dependencies included, pip / setuptools not), measured from the files each installed distribution
records (its ``RECORD``) in this environment, which `make` filled with ``[all,dev]``.

Why not a fresh venv per extra: the closure is computed from the same requirement metadata pip resolves, and the
files are the ones pip wrote; a fresh install of each extra would download ~3 GB again. ``--fresh EXTRA`` does that
for one extra, as a check of this method (``pip install --target`` into a temporary folder, then ``du``).

usage: python bench/install_sizes.py [--out runs/bench/install_sizes.json] [--fresh onnx]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"pip", "setuptools", "wheel"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_size(dist: md.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        p = Path(dist.locate_file(f))
        if p.is_file():
            total += p.stat().st_size
    return total


def closure(requirements: list[Requirement]) -> set[str]:
    """Normalised names of the installed distributions `requirements` pull in, transitively (environment markers
    evaluated here; a requirement's own extras followed)."""
    names: set[str] = set()
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(r.name, frozenset(r.extras)) for r in requirements]
    while todo:
        name, extras = todo.pop()
        key = (_norm(name), extras)
        if key in done or key[0] in SKIP or key[0] == "edge-rerank":
            continue
        done.add(key)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # optional on this platform, or not installed here
        names.add(key[0])
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((r.name, frozenset(r.extras)))
    return names


def _project() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    """Core requirements and each extra's (``edge-rerank[a,b]`` expanded), read from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = project["optional-dependencies"]

    def expand(extra: str) -> list[Requirement]:
        out = []
        for r in map(Requirement, raw[extra]):
            out += [x for e in sorted(r.extras) for x in expand(e)] if _norm(r.name) == "edge-rerank" else [r]
        return out

    return [Requirement(r) for r in project["dependencies"]], {e: expand(e) for e in raw}


def measure() -> dict:
    core, extras = _project()
    sizes = {_norm(d.metadata["Name"]): _dist_size(d) for d in md.distributions()}
    core_set = closure(core)
    rows = {"core": {"mb": sum(sizes.get(n, 0) for n in core_set) / 1e6, "distributions": len(core_set)}}
    for extra, reqs in extras.items():
        names = closure(core + reqs)
        biggest = sorted(((sizes.get(n, 0) / 1e6, n) for n in names - core_set), reverse=True)[:4]
        rows[extra] = {"mb": sum(sizes.get(n, 0) for n in names) / 1e6, "distributions": len(names),
                       "largest_added": [f"{n} {mb:.0f} MB" for mb, n in biggest]}
    return rows


def fresh(extra: str) -> float:
    """MB that ``pip install --target`` of the extra writes (needs the package index or pip's cache)."""
    with tempfile.TemporaryDirectory() as d:
        spec = f"{ROOT}[{extra}]" if extra != "core" else str(ROOT)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", d, spec], check=True)
        total = sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file() and not p.is_symlink())
        return total / 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/bench/install_sizes.json", help="JSON output (default: %(default)s)")
    p.add_argument("--fresh", action="append", default=[], metavar="EXTRA",
                   help="also pip-install this extra into a temporary folder and measure it (repeatable)")
    a = p.parse_args()
    rows = measure()
    print(f"{'extra':8} {'MB':>8} {'dists':>6}  largest additions over the core")
    for name, r in rows.items():
        print(f"{name:8} {r['mb']:8.0f} {r['distributions']:6d}  {', '.join(r.get('largest_added', []))}")
    res = {"method": "installed distributions' RECORD files, dependency closure per extra", "extras": rows}
    for extra in a.fresh:
        res.setdefault("fresh_mb", {})[extra] = mb = fresh(extra)
        print(f"fresh install of [{extra}]: {mb:.0f} MB (closure estimate {rows[extra]['mb']:.0f} MB)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
