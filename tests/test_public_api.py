"""The public surface is frozen: every name in ``__all__`` of the public modules, with the signatures of its
functions, constructors and public methods, must match tests/public_api.json. A deliberate API change updates
the snapshot (``python tests/test_public_api.py --update``) in the same commit, where a reviewer sees it."""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("public_api.json")
PUBLIC_MODULES = ("edge_rerank.device_sdk", "edge_rerank.api")


def _sig(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "<no signature>"


def _describe(obj) -> object:
    if inspect.isclass(obj):
        if issubclass(obj, enum.Enum):
            return {"enum": sorted(m.name for m in obj)}
        d: dict[str, object] = {"init": _sig(obj)}
        if dataclasses.is_dataclass(obj):
            d["fields"] = [f.name for f in dataclasses.fields(obj)]
        for name, member in sorted(vars(obj).items()):
            if name.startswith("_"):
                continue
            if isinstance(member, property):
                d[name] = "property"
            elif isinstance(member, staticmethod | classmethod):
                d[name] = _sig(member.__func__)
            elif inspect.isfunction(member):
                d[name] = _sig(member)
        return d
    if callable(obj):
        return _sig(obj)
    return type(obj).__name__


def current() -> dict[str, dict[str, object]]:
    out = {}
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        out[modname] = {name: _describe(getattr(mod, name)) for name in sorted(mod.__all__)}
    return out


def test_public_signatures_are_frozen():
    now = current()
    frozen = json.loads(SNAPSHOT.read_text())
    changed = {m: sorted(set(now[m]) ^ set(frozen.get(m, {})) | {k for k in now[m] if frozen.get(m, {}).get(k)
                                                                 not in (None, now[m][k])})
               for m in now}
    changed = {m: v for m, v in changed.items() if v}
    assert now == frozen, (f"public API changed: {changed}. If deliberate, run `python tests/test_public_api.py "
                           "--update` and commit tests/public_api.json with the change.")


def test_every_public_name_is_documented():
    for modname in PUBLIC_MODULES:
        mod = importlib.import_module(modname)
        undocumented = [n for n in mod.__all__ if callable(getattr(mod, n)) and not inspect.getdoc(getattr(mod, n))]
        assert not undocumented, f"{modname}: no docstring for {undocumented}"


if __name__ == "__main__":
    if "--update" in sys.argv:
        SNAPSHOT.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {SNAPSHOT}")
