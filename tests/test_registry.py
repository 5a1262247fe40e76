"""Model registry and delivery: publish verified bundles, download with sha256 ETags and ranges, promote,
staged rollout by user bucket (what pages advertise), roll back; admin key; path traversal -> 4xx."""

import hashlib
import io
import json
import shutil
import tarfile

import pytest

from edge_rerank.cloud.app import CloudConfig, create_app
from edge_rerank.cloud.registry import Registry, RegistryError, user_bucket
from edge_rerank.converters.bundle import write_bundle
from edge_rerank.device_sdk import wire
from edge_rerank.device_sdk.bundle import read_bundle
from edge_rerank.device_sdk.contracts import Context, SearchRequest

PB = "application/x-protobuf"
ADMIN = {"X-Admin-Key": "adm1n"}


@pytest.fixture(scope="module")
def bundles(bundle_dir, tmp_path_factory):
    """Two versions of the device reranker, written by the real bundle writer."""
    src = read_bundle(bundle_dir)
    out = {}
    for v in ("v1", "v2"):
        out[v] = write_bundle(tmp_path_factory.mktemp(v) / "bundle", model_file=src.model_path, fmt="onnx",
                              name="device-reranker", version=v, feature_config=src.feature_config)
    return out


def _tar(bundle, *, extra: tarfile.TarInfo | None = None, extra_data: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for p in sorted(bundle.iterdir()):
            t.add(p, arcname=p.name)
        if extra is not None:
            t.addfile(extra, io.BytesIO(extra_data) if extra.isfile() else None)
    return buf.getvalue()


@pytest.fixture()
def app(cloud_data, tmp_path):
    return create_app(CloudConfig(data_dir=str(cloud_data), registry_dir=str(tmp_path / "registry"),
                                  admin_key="adm1n", model_version="fallback"))


@pytest.fixture()
def client(app):
    return app.test_client()


def _page_version(client, user: str) -> str:
    req = SearchRequest("r", "s", user, "hotpot", Context(5, 5, 19), page_size=1)
    r = client.post("/v1/search", data=wire.request_to_proto(req).SerializeToString(), content_type=PB)
    assert r.status_code == 200
    return wire.parse(wire.pb.SearchPage, r.data).model_version


def test_publish_list_and_download_with_etag_and_ranges(client, bundles):
    assert client.put("/v1/models/device-reranker/v1", data=_tar(bundles["v1"]), headers=ADMIN).status_code == 201
    # publishing the same bundle again is a no-op; the listing shows it
    assert client.put("/v1/models/device-reranker/v1", data=_tar(bundles["v1"]), headers=ADMIN).status_code == 201
    listing = client.get("/v1/models").get_json()["models"]
    assert listing == [{"name": "device-reranker", "stable": None, "candidate": None, "rollout_percent": 0,
                        "history": [], "versions": ["v1"]}]
    m = client.get("/v1/models/device-reranker/v1/manifest")
    assert m.status_code == 200 and m.get_json()["version"] == "v1"
    assert m.headers["ETag"] == f'"{hashlib.sha256(m.data).hexdigest()}"'
    manifest = m.get_json()
    rel = manifest["model_file"]
    url = f"/v1/models/device-reranker/v1/files/{rel}"
    full = client.get(url)
    assert full.status_code == 200 and full.headers["Accept-Ranges"] == "bytes"
    assert hashlib.sha256(full.data).hexdigest() == manifest["files"][rel]
    assert full.headers["ETag"] == f'"{manifest["files"][rel]}"' and full.headers["X-Content-SHA256"]
    assert client.get(url, headers={"If-None-Match": full.headers["ETag"]}).status_code == 304
    # resume: the first 1000 bytes, then the rest
    head = client.get(url, headers={"Range": "bytes=0-999"})
    tail = client.get(url, headers={"Range": "bytes=1000-", "If-Range": full.headers["ETag"]})
    assert head.status_code == tail.status_code == 206
    assert head.data + tail.data == full.data
    assert client.get(url, headers={"Range": f"bytes={len(full.data) + 10}-"}).status_code == 416


def test_staged_rollout_promote_and_rollback(client, app, bundles):
    reg: Registry = app.extensions["edge_rerank.registry"]
    users = [f"u{i:05d}" for i in range(400)]
    assert _page_version(client, users[0]) == "fallback"  # nothing published yet
    for v in ("v1", "v2"):
        reg.publish(bundles[v])
    assert _page_version(client, users[0]) == "fallback"  # published, not promoted
    r = client.post("/v1/models/device-reranker/promote", json={"version": "v1"}, headers=ADMIN)
    assert r.status_code == 200 and r.get_json()["stable"] == "v1"
    assert {_page_version(client, u) for u in users[:20]} == {"device-reranker@v1"}

    r = client.post("/v1/models/device-reranker/promote", json={"version": "v2", "rollout_percent": 30},
                    headers=ADMIN)
    assert r.status_code == 200 and r.get_json()["candidate"] == "v2"
    got = {u: _page_version(client, u) for u in users}
    expect = {u: "device-reranker@v2" if user_bucket("device-reranker", u) < 30 else "device-reranker@v1"
              for u in users}
    assert got == expect
    share = sum(v.endswith("v2") for v in got.values()) / len(users)
    assert 0.2 < share < 0.4
    a = client.get(f"/v1/models/device-reranker/assignment?user_id={users[3]}").get_json()
    assert a["model_version"] == got[users[3]] and a["bucket"] == user_bucket("device-reranker", users[3])

    assert client.post("/v1/models/device-reranker/rollback", headers=ADMIN).get_json()["candidate"] is None
    assert {_page_version(client, u) for u in users[:50]} == {"device-reranker@v1"}
    client.post("/v1/models/device-reranker/promote", json={"version": "v2"}, headers=ADMIN)
    s = client.get("/v1/models/device-reranker").get_json()
    assert (s["stable"], s["history"]) == ("v2", ["v1"])
    assert _page_version(client, users[0]) == "device-reranker@v2"
    assert client.post("/v1/models/device-reranker/rollback", headers=ADMIN).get_json()["stable"] == "v1"
    r = client.post("/v1/models/device-reranker/rollback", headers=ADMIN)
    assert r.status_code == 409 and "nothing to roll back" in r.get_json()["error"]


def test_admin_key_is_required_and_checked(client, bundles, cloud_data, tmp_path):
    body = _tar(bundles["v1"])
    assert client.put("/v1/models/device-reranker/v1", data=body).status_code == 401
    assert client.put("/v1/models/device-reranker/v1", data=body, headers={"X-Admin-Key": "adm1"}).status_code == 401
    assert client.post("/v1/models/device-reranker/rollback", headers={"X-Admin-Key": "x"}).status_code == 401
    no_admin = create_app(CloudConfig(data_dir=str(cloud_data), registry_dir=str(tmp_path / "r2"))).test_client()
    r = no_admin.put("/v1/models/device-reranker/v1", data=body, headers=ADMIN)
    assert r.status_code == 403 and "no admin key" in r.get_json()["error"]
    no_reg = create_app(CloudConfig(data_dir=str(cloud_data))).test_client()
    assert no_reg.get("/v1/models").status_code == 404


@pytest.mark.parametrize("path,status", [
    ("/v1/models/device-reranker/v1/files/../../../etc/passwd", 404),
    ("/v1/models/device-reranker/v1/files/..%2F..%2F..%2Fstate.json", 404),
    ("/v1/models/device-reranker/v1/files/%2Fetc%2Fpasswd", 404),
    ("/v1/models/device-reranker/v1/files/state.json", 404),
    ("/v1/models/device-reranker/..%2F..%2Fx/manifest", 404),
    ("/v1/models/device-reranker/.../manifest", 400),
    ("/v1/models/..%2Fetc/v1/manifest", 404),
    ("/v1/models/.hidden/v1/manifest", 400),
    ("/v1/models/device-reranker/v9/manifest", 404),
    ("/v1/models/no-such-model/v1/manifest", 404),
    ("/v1/models/no-such-model", 404),
])
def test_traversal_and_unknown_names_are_4xx(client, app, bundles, path, status):
    app.extensions["edge_rerank.registry"].publish(bundles["v1"])
    r = client.get(path)
    assert r.status_code == status, (r.status_code, r.data[:200])
    assert r.get_json()["error"]


def test_bad_archives_and_bad_bundles_are_rejected(client, bundles, tmp_path):
    evil = tarfile.TarInfo("../../evil.txt")
    evil.size = 4
    r = client.put("/v1/models/device-reranker/v1", data=_tar(bundles["v1"], extra=evil, extra_data=b"evil"),
                   headers=ADMIN)
    assert r.status_code == 400 and "escapes" in r.get_json()["error"]
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    r = client.put("/v1/models/device-reranker/v1", data=_tar(bundles["v1"], extra=link), headers=ADMIN)
    assert r.status_code == 400 and "not a regular file" in r.get_json()["error"]
    assert client.put("/v1/models/device-reranker/v1", data=b"garbage", headers=ADMIN).status_code == 400
    assert client.put("/v1/models/device-reranker/v7", data=_tar(bundles["v1"]), headers=ADMIN).status_code == 400
    tampered = tmp_path / "tampered"
    shutil.copytree(bundles["v1"], tampered)
    model_file = json.loads((tampered / "manifest.json").read_text())["model_file"]
    with open(tampered / model_file, "ab") as f:
        f.write(b"\0")
    r = client.put("/v1/models/device-reranker/v1", data=_tar(tampered), headers=ADMIN)
    assert r.status_code == 400 and "sha256 mismatch" in r.get_json()["error"]
    assert client.get("/v1/models").get_json()["models"] == []  # nothing half-published


def test_republishing_a_version_with_other_content_conflicts(bundles, tmp_path):
    reg = Registry(tmp_path)
    reg.publish(bundles["v1"])
    other = tmp_path / "other"
    shutil.copytree(bundles["v2"], other)
    m = json.loads((other / "manifest.json").read_text())
    m["version"] = "v1"
    (other / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RegistryError, match="already published") as e:
        reg.publish(other)
    assert e.value.status == 409


@pytest.mark.parametrize("body", [{"version": "v1", "rollout_percent": 0}, {"version": "v1", "rollout_percent": 101},
                                  {"version": "v1", "rollout_percent": "50"}, {"version": 3}, [1, 2], {}])
def test_promote_validates_its_body(client, app, bundles, body):
    app.extensions["edge_rerank.registry"].publish(bundles["v1"])
    r = client.post("/v1/models/device-reranker/promote", json=body, headers=ADMIN)
    assert r.status_code == 400 and r.get_json()["error"]
