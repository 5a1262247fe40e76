"""Model delivery to the device over real HTTP (gunicorn): signed bundles fetched, verified, warmed up and swapped
atomically; every failure (tampered file, wrong signature, unsigned bundle, truncated download, wrong feature
version) keeps the serving model, and rollback returns to the previous one."""

import shutil

import numpy as np
import pytest

from edge_rerank.cloud.app import CloudConfig
from edge_rerank.cloud.registry import Registry
from edge_rerank.cloud.serve import running_server
from edge_rerank.converters.bundle import write_bundle
from edge_rerank.device_sdk.bundle import MANIFEST, read_bundle
from edge_rerank.device_sdk.features import input_specs
from edge_rerank.device_sdk.model_manager import HttpBundleSource, ModelManager
from edge_rerank.device_sdk.signing import SIGNATURE_FILE, generate_keypair, sign_manifest

pytest.importorskip("cryptography")


def _signed_copy(bundle_dir, out, version, private_key, fcfg):
    """A bundle of the same model under another version, signed with `private_key`."""
    b = read_bundle(bundle_dir)
    new = write_bundle(out, model_file=b.model_path, fmt=b.manifest.format, name="device-reranker",
                       version=version, feature_config=fcfg)
    (new / SIGNATURE_FILE).write_bytes(sign_manifest((new / MANIFEST).read_bytes(), private_key))
    return new


@pytest.fixture(scope="module")
def keys():
    return generate_keypair()


@pytest.fixture(scope="module")
def cloud(cloud_data, bundle_dir, fcfg, keys, tmp_path_factory):
    priv, _ = keys
    other_priv, _ = generate_keypair()
    root = tmp_path_factory.mktemp("delivery")
    reg = Registry(root / "registry")
    reg.publish(_signed_copy(bundle_dir, root / "v1", "v1", priv, fcfg))
    reg.publish(_signed_copy(bundle_dir, root / "v2", "v2", priv, fcfg))
    reg.publish(_signed_copy(bundle_dir, root / "evil", "evil", other_priv, fcfg))  # signed by someone else
    unsigned = _signed_copy(bundle_dir, root / "unsigned", "unsigned", priv, fcfg)
    (unsigned / SIGNATURE_FILE).unlink()
    reg.publish(unsigned)
    reg.publish(_signed_copy(bundle_dir, root / "tampered", "tampered", priv, fcfg))
    model_file = read_bundle(root / "registry" / "device-reranker" / "versions" / "tampered").manifest.model_file
    p = root / "registry" / "device-reranker" / "versions" / "tampered" / model_file
    p.write_bytes(p.read_bytes()[:-8] + b"\0" * 8)  # bit rot / tampering after publishing
    reg.promote("device-reranker", "v1")
    # the test promotes through its own Registry object (another process's view): the server re-checks the state on
    # every assignment instead of at most once per second (CloudConfig.registry_check_s)
    cfg = CloudConfig(data_dir=str(cloud_data), registry_dir=str(root / "registry"), admin_key="k",
                      registry_check_s=0.0)
    with running_server(cfg) as url:
        yield url, reg


def _manager(tmp_path, fcfg, public_key):
    return ModelManager(root=tmp_path / "models", public_key=public_key, expected_fingerprint=fcfg.fingerprint())


def _serve(reg, version):
    reg.promote("device-reranker", version)


def test_signed_bundle_is_fetched_verified_and_swapped_then_rolled_back(cloud, tmp_path, fcfg, keys):
    url, reg = cloud
    _serve(reg, "v1")
    mm = _manager(tmp_path, fcfg, keys[1])
    src = HttpBundleSource(url)
    assert mm.update(src, "device-reranker", "u1") and mm.current.version == "v1"
    assert not mm.update(src, "device-reranker", "u1")  # already serving it: nothing to do
    _serve(reg, "v2")
    assert mm.update(src, "device-reranker", "u1") and mm.current.version == "v2"
    assert mm.rollback() and mm.current.version == "v1"
    x = {n: np.zeros((1, *s), dtype=d) for n, s, d in input_specs(fcfg)}
    x["cand_mask"][0, :3] = 1
    assert np.all(np.isfinite(mm.current.backend.run(x)[0, :3]))


@pytest.mark.parametrize("version,reason", [("evil", "signature"), ("unsigned", "not signed"),
                                            ("tampered", "sha256")])
def test_bad_bundles_never_replace_the_serving_model(cloud, tmp_path, fcfg, keys, version, reason):
    url, reg = cloud
    _serve(reg, "v1")
    mm = _manager(tmp_path, fcfg, keys[1])
    src = HttpBundleSource(url)
    assert mm.update(src, "device-reranker", "u1")
    _serve(reg, version)
    assert not mm.update(src, "device-reranker", "u1")
    assert mm.current.version == "v1" and reason in mm.last_error
    assert not (tmp_path / "models" / "device-reranker" / version).exists()  # nothing half-written stays
    assert not list((tmp_path / "models" / "device-reranker").glob(".staging-*"))


def test_truncated_download_and_wrong_feature_version_keep_the_serving_model(cloud, tmp_path, fcfg, keys):
    from dataclasses import replace

    url, reg = cloud
    _serve(reg, "v1")

    class Truncating(HttpBundleSource):
        def fetch(self, name, version, rel):
            data = super().fetch(name, version, rel)
            return data[: len(data) // 2] if rel not in (MANIFEST, SIGNATURE_FILE) else data

    mm = _manager(tmp_path, fcfg, keys[1])
    assert mm.update(HttpBundleSource(url), "device-reranker", "u1")
    _serve(reg, "v2")
    assert not mm.update(Truncating(url), "device-reranker", "u1")
    assert mm.current.version == "v1" and "sha256" in mm.last_error
    other = ModelManager(root=tmp_path / "m2", public_key=keys[1],
                         expected_fingerprint=replace(fcfg, dwell_threshold_ms=999.0).fingerprint())
    assert not other.update(HttpBundleSource(url), "device-reranker", "u1")
    assert other.current is None and "feature config" in other.last_error
    shutil.rmtree(tmp_path / "m2", ignore_errors=True)


def test_unreachable_cloud_is_a_clear_error_not_a_crash(tmp_path, fcfg, keys):
    mm = _manager(tmp_path, fcfg, keys[1])
    assert not mm.update(HttpBundleSource("http://127.0.0.1:9", timeout_s=2), "device-reranker", "u1")
    assert mm.current is None and "failed" in mm.last_error
