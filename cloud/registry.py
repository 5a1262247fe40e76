"""Model registry and delivery: verified bundles by name and version, promotion, rollback, staged rollout.

Layout of a registry directory (shared by every gunicorn worker; writes are atomic and serialised by a
file lock, readers re-read ``state.json`` when it changes)::

  <name>/versions/<version>/   a bundle as ``converters.bundle.write_bundle`` wrote it (manifest.json + files)
  <name>/state.json            {"stable", "candidate", "rollout_percent", "history"}
  .lock

Staged rollout: a user falls in bucket ``sha256("<name>:<user_id>") mod 100``; buckets below
``rollout_percent`` get the candidate, everyone else the stable version. Pages advertise the assignment as
``<name>@<version>`` in ``SearchPage.model_version``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from edge_rerank.cloud.logs import fsync_dir
from edge_rerank.device_sdk.bundle import MANIFEST, BundleError, Manifest, read_bundle
from edge_rerank.device_sdk.signing import SIGNATURE_FILE

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class RegistryError(Exception):
    """A registry operation failed; `status` is the HTTP status it maps to."""

    def __init__(self, reason: str, status: int = 400):
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass
class ModelState:
    stable: str | None = None
    candidate: str | None = None
    rollout_percent: int = 0
    history: list[str] = field(default_factory=list)  # earlier stable versions, newest last


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value) or value in (".", ".."):
        raise RegistryError(f"invalid model {kind} {value!r}: 1-64 of [A-Za-z0-9._-], not starting with . _ -")
    return value


def user_bucket(name: str, user_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}:{user_id}".encode()).digest()[:8], "big") % 100


def _extract_member(tar: tarfile.TarFile, mem: tarfile.TarInfo, root: Path) -> None:
    """Write one checked regular member under `root`, copying at most its declared size."""
    dst = (root / mem.name).resolve()
    if root.resolve() not in dst.parents:
        raise RegistryError(f"archive member {mem.name!r} escapes the bundle")
    dst.parent.mkdir(parents=True, exist_ok=True)
    src = tar.extractfile(mem)
    if src is None:
        raise RegistryError(f"archive member {mem.name!r} has no content")
    with src, open(dst, "wb") as out:
        left = mem.size
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise RegistryError(f"archive member {mem.name!r} is truncated")
            out.write(chunk)
            left -= len(chunk)


_MAX_NAMES = 1024  # model names whose state path / assignment state a registry keeps (names come from URLs)
_MAX_BUCKETS = 1 << 16  # (name, user) -> bucket memo, cleared when full


class Registry:
    """``state_check_s``: how old the state :meth:`assign` serves may be — it re-checks ``state.json`` (one
    ``stat``) at most this often per model name. A promotion or rollback through this instance takes effect on its
    next call at once; one made by another process (another worker, the CLI) within ``state_check_s``. The admin
    reads (:meth:`state`) always check."""

    def __init__(self, root: str | Path, *, state_check_s: float = 1.0):
        if isinstance(state_check_s, bool) or not (isinstance(state_check_s, int | float)
                                                   and 0.0 <= state_check_s <= 3600.0):  # NaN fails too
            raise ValueError(f"state_check_s must be a number of seconds in [0, 3600], got {state_check_s!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_check_s = float(state_check_s)
        self._cache: dict[str, tuple[tuple[int, int, int], ModelState]] = {}
        self._state_paths: dict[str, str] = {}  # checked names -> state.json path (stat'ed per request)
        # name -> (monotonic time of the check, state or the RegistryError it raised): what assign() serves
        self._fresh: dict[str, tuple[float, ModelState | RegistryError]] = {}
        self._buckets: dict[tuple[str, str], int] = {}
        self._gen = 0  # bumped by every write of this process
        self._mu = threading.Lock()

    # ---- locking and state -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mu, open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _model_dir(self, name: str) -> Path:
        return self.root / check_name("name", name)

    def _version_dir(self, name: str, version: str) -> Path:
        return self._model_dir(name) / "versions" / check_name("version", version)

    def state(self, name: str) -> ModelState:
        path = self._state_paths.get(name)
        if path is None:
            path = str(self._model_dir(name) / "state.json")
            if len(self._state_paths) < 1024:
                self._state_paths[name] = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not (self._model_dir(name) / "versions").is_dir():
                raise RegistryError(f"unknown model {name!r}", 404) from None
            return ModelState()
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        with open(path) as f:
            state = ModelState(**json.load(f))
        self._cache[name] = (key, state)
        return state

    def _write_state(self, name: str, state: ModelState) -> None:
        d = self._model_dir(name)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".state-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(state), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / "state.json")
        fsync_dir(d)

    # ---- reading -----------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "versions").is_dir() and NAME_RE.match(p.name))

    def versions(self, name: str) -> list[str]:
        d = self._model_dir(name) / "versions"
        if not d.is_dir():
            raise RegistryError(f"unknown model {name!r}", 404)
        return sorted(p.name for p in d.iterdir() if (p / MANIFEST).is_file())

    def manifest(self, name: str, version: str) -> Manifest:
        path = self._version_dir(name, version) / MANIFEST
        if not path.is_file():
            if not (self._model_dir(name) / "versions").is_dir():
                raise RegistryError(f"unknown model {name!r}", 404)
            raise RegistryError(f"model {name!r} has no version {version!r}", 404)
        return Manifest.from_dict(json.loads(path.read_text()))

    def file(self, name: str, version: str, rel: str) -> tuple[Path, str]:
        """(path, sha256) of a file of a published bundle; only names the manifest lists (or the manifest and
        its signature)."""
        m = self.manifest(name, version)
        vdir = self._version_dir(name, version)
        if rel in (MANIFEST, SIGNATURE_FILE):
            path = vdir / rel
            if not path.is_file():
                raise RegistryError(f"{name}@{version} is not signed", 404)
            return path, hashlib.sha256(path.read_bytes()).hexdigest()
        if rel not in m.files:
            raise RegistryError(f"{name}@{version} has no file {rel!r}", 404)
        path = (vdir / rel).resolve()
        if vdir.resolve() not in path.parents:
            raise RegistryError(f"file name {rel!r} escapes the bundle", 400)
        return path, m.files[rel]

    def _recent_state(self, name: str) -> ModelState:
        """state(name) as checked at most ``state_check_s`` ago (an unknown model's error included)."""
        now = time.monotonic()
        hit = self._fresh.get(name)
        if hit is None or now - hit[0] >= self.state_check_s:
            gen = self._gen
            try:
                got: ModelState | RegistryError = self.state(name)
            except RegistryError as exc:
                got = exc
            # kept unless a write of this process came in between (its state must be read, not this one)
            if gen == self._gen and (name in self._fresh or len(self._fresh) < _MAX_NAMES):
                self._fresh[name] = (now, got)
            hit = (now, got)
        got = hit[1]
        if isinstance(got, RegistryError):
            raise RegistryError(got.reason, got.status)
        return got

    def _forget(self, name: str) -> None:
        """After a write: this process's next read checks the file."""
        self._gen += 1
        self._cache.pop(name, None)
        self._fresh.pop(name, None)

    def bucket(self, name: str, user_id: str) -> int:
        """:func:`user_bucket`, memoised (a bounded dict: one sha256 per new user)."""
        key = (name, user_id)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._buckets.clear()
            b = self._buckets[key] = user_bucket(name, user_id)
        return b

    def assign(self, name: str, user_id: str) -> str | None:
        """The version `user_id` should run (staged rollout), or None if nothing is promoted. Served from the state
        checked at most ``state_check_s`` ago (see the class docstring)."""
        s = self._recent_state(name)
        if s.candidate is not None and self.bucket(name, user_id) < s.rollout_percent:
            return s.candidate
        return s.stable

    # ---- writing -----------------------------------------------------------------------------------
    def publish(self, bundle_dir: str | Path) -> Manifest:
        """Verify a bundle directory (sha256 of every file) and add it as <name>/<version>. Publishing the
        same bundle again is a no-op; a different bundle under an existing version is a conflict (409)."""
        try:
            bundle = read_bundle(bundle_dir)
        except BundleError as exc:
            raise RegistryError(f"bundle rejected: {exc}", 400) from exc
        m = bundle.manifest
        name, version = check_name("name", m.name), check_name("version", m.version)
        with self._locked():
            target = self._version_dir(name, version)
            if target.exists():
                if (target / MANIFEST).read_bytes() == (Path(bundle_dir) / MANIFEST).read_bytes():
                    return m
                raise RegistryError(f"{name}@{version} is already published with different content", 409)
            (target.parent).mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
            try:
                signed = [SIGNATURE_FILE] if (Path(bundle_dir) / SIGNATURE_FILE).is_file() else []
                for rel in [MANIFEST, *signed, *m.files]:
                    dst = staging / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(bundle_dir) / rel, dst)
                    with open(dst, "rb") as f:
                        os.fsync(f.fileno())
                read_bundle(staging)  # the copy verifies too
                os.rename(staging, target)
                fsync_dir(target.parent)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return m

    def publish_archive(self, data: bytes | BinaryIO, *, name: str | None = None, version: str | None = None,
                        max_unpacked_bytes: int = 512 << 20, max_members: int = 256) -> Manifest:
        """Publish a bundle sent as a tar archive (optionally gzip/xz): regular files only, relative paths
        without ``..``; if given, `name`/`version` must match the manifest. Members are checked and extracted one
        at a time while the archive is read, so more than `max_members` members or `max_unpacked_bytes` of
        content is refused (413) before it is written: a small compressed archive cannot fill the disk."""
        with tempfile.TemporaryDirectory(prefix="edge-rerank-upload-") as tmp:
            try:
                fileobj = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
                with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
                    total = count = 0
                    for mem in tar:  # streaming: headers are read as the loop goes
                        count += 1
                        if count > max_members:
                            raise RegistryError(f"archive has more than {max_members} members", 413)
                        p = PurePosixPath(mem.name)
                        if p.is_absolute() or ".." in p.parts:
                            raise RegistryError(f"archive member {mem.name!r} escapes the bundle")
                        if mem.isdir():
                            continue
                        if not mem.isfile():
                            raise RegistryError(f"archive member {mem.name!r} is not a regular file")
                        total += mem.size
                        if total > max_unpacked_bytes:
                            raise RegistryError(f"archive unpacks to more than {max_unpacked_bytes} bytes", 413)
                        _extract_member(tar, mem, Path(tmp))
                    if count == 0:
                        raise RegistryError("empty archive")
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                raise RegistryError(f"not a readable tar archive: {exc}") from exc
            root = Path(tmp)
            if not (root / MANIFEST).is_file():  # allow one top-level folder
                subs = [p for p in root.iterdir() if p.is_dir()]
                if len(subs) == 1 and (subs[0] / MANIFEST).is_file():
                    root = subs[0]
            try:
                m = Manifest.from_dict(json.loads((root / MANIFEST).read_text()))
            except (OSError, json.JSONDecodeError, BundleError, UnicodeDecodeError) as exc:
                raise RegistryError(f"archive has no readable {MANIFEST}: {exc}") from exc
            if (name is not None and m.name != name) or (version is not None and m.version != version):
                raise RegistryError(f"archive holds {m.name}@{m.version}, not {name}@{version}")
            return self.publish(root)

    def promote(self, name: str, version: str, rollout_percent: int = 100) -> ModelState:
        """100 %: `version` becomes stable (the old stable goes to the history). Below 100 %: `version`
        becomes the candidate for that share of user buckets; the stable version stays."""
        if not isinstance(rollout_percent, int) or isinstance(rollout_percent, bool) or \
                not 0 < rollout_percent <= 100:
            raise RegistryError(f"rollout_percent must be an integer in 1..100, got {rollout_percent!r}")
        self.manifest(name, version)  # 404 if unknown
        with self._locked():
            s = self.state(name)
            s = ModelState(**asdict(s))
            if rollout_percent == 100:
                if s.stable != version:
                    if s.stable is not None:
                        s.history.append(s.stable)
                    s.stable = version
                s.candidate, s.rollout_percent = None, 0
            else:
                if s.stable == version:
                    raise RegistryError(f"{name}@{version} is already stable")
                s.candidate, s.rollout_percent = version, rollout_percent
            self._write_state(name, s)
            self._forget(name)
        return s

    def rollback(self, name: str) -> ModelState:
        """Abort a staged rollout if there is one; otherwise return to the previous stable version."""
        with self._locked():
            s = ModelState(**asdict(self.state(name)))
            if s.candidate is not None:
                s.candidate, s.rollout_percent = None, 0
            elif s.history:
                s.stable = s.history.pop()
            else:
                raise RegistryError(f"{name}: nothing to roll back to", 409)
            self._write_state(name, s)
            self._forget(name)
        return s
