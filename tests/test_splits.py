"""Honest evaluation (issue 13 point 4): a three-way split by session recorded in the checkpoint; early stopping
on validation only; export / compress / evaluate reuse the recorded test split and refuse other logs."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from edge_rerank.cloud.training.data import SessionSplit, SplitConfig, SplitMismatch, split_sessions


@pytest.fixture(scope="module")
def logs(logged_rows, tmp_path_factory):
    from edge_rerank.cloud.logs import rows_to_table

    d = tmp_path_factory.mktemp("logs")
    pq.write_table(rows_to_table(logged_rows), d / "part-0.parquet")
    return d


@pytest.fixture(scope="module")
def seed1(logs, tmp_path_factory):
    """A model trained with seed 1 (the case where export/compress used to re-split with seed 0)."""
    from edge_rerank.api import train

    return train(logs, tmp_path_factory.mktemp("seed1"), epochs=1, seed=1, progress=False)


def _sessions(samples) -> set[str]:
    return set(samples.session_ids)


def test_three_way_split_is_seeded_disjoint_and_round_trips(samples):
    split, tr, va, te = split_sessions(samples, SplitConfig(seed=1))
    assert split == SessionSplit.make(reversed(samples.session_ids), SplitConfig(seed=1))  # order-free
    parts = [set(split.train), set(split.valid), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(samples.session_ids)
    n = len(set(samples.session_ids))
    assert 0.08 * n < len(split.test) < 0.22 * n and 0.08 * n < len(split.valid) < 0.22 * n
    assert (_sessions(tr), _sessions(va), _sessions(te)) == tuple(parts)
    assert len(tr) + len(va) + len(te) == len(samples)
    assert split.test != SessionSplit.make(samples.session_ids, SplitConfig(seed=0)).test  # the seed matters
    assert SessionSplit.from_dict(split.to_dict()) == split
    tampered = split.to_dict()
    tampered["test"], tampered["train"] = tampered["test"][1:], [*tampered["train"], tampered["test"][0]]
    with pytest.raises(SplitMismatch):
        SessionSplit.from_dict(tampered)  # the parts are not what the recorded config makes


def test_early_stopping_never_sees_test(split_parts, fcfg, monkeypatch):
    """Every list scored inside the epoch loop is a validation list; and the test lists change nothing."""
    from edge_rerank.cloud.training import train as tr_mod

    _, train, valid, test = split_parts
    seen: list[set[str]] = []
    in_loop = [False]
    real_predict, real_loop = tr_mod.predict, tr_mod.fit_loop

    def predict(model, samples, *a, **k):
        if in_loop[0]:
            seen.append(set(samples.session_ids))
        return real_predict(model, samples, *a, **k)

    def fit_loop(*a, **k):
        in_loop[0] = True
        try:
            return real_loop(*a, **k)
        finally:
            in_loop[0] = False

    monkeypatch.setattr(tr_mod, "predict", predict)
    monkeypatch.setattr(tr_mod, "fit_loop", fit_loop)
    cfg = tr_mod.TrainConfig(epochs=2, threads=1)
    a, sa = tr_mod.fit(train, valid, fcfg, tcfg=cfg, test=test, progress=False)
    assert seen and all(s <= _sessions(valid) for s in seen)
    assert not any(s & _sessions(test) for s in seen)
    b, sb = tr_mod.fit(train, valid, fcfg, tcfg=cfg, test=None, progress=False)
    assert sa["history"] == sb["history"] and "test_model" in sa and "test_model" not in sb
    assert np.array_equal(real_predict(a, test), real_predict(b, test))


def test_checkpoint_records_split_and_seed(seed1, samples):
    from edge_rerank.cloud.training.train import read_checkpoint

    ck = read_checkpoint(seed1.checkpoint)
    split = ck.require_split()
    assert split.config == SplitConfig(seed=1) and ck.summary["train_config"]["seed"] == 1
    assert split == SessionSplit.make(samples.session_ids, SplitConfig(seed=1))
    assert ck.summary["split"] == split.describe() == seed1.split
    assert seed1.test_lists == sum(s in set(split.test) for s in samples.session_ids)
    assert seed1.test["ndcg@10"] == ck.summary["test_model"]["ndcg@10"]


def test_export_and_compress_use_the_recorded_test_split(seed1, logs, tmp_path, monkeypatch):
    """CLI export and compress of a seed-1 checkpoint measure exactly its test sessions (none trained on)."""
    from edge_rerank.cli import main
    from edge_rerank.compression import presets
    from edge_rerank.converters import export as export_mod

    split = seed1.held_out.split
    test, train_valid = set(split.test), set(split.train) | set(split.valid)
    expected = seed1.held_out.test
    got: dict[str, object] = {}
    real_export, real_preset = export_mod.export_formats, presets.run_preset

    def export_formats(model, inputs, *a, **k):
        got["export"] = inputs
        return real_export(model, inputs, *a, **k)

    def run_preset(name, model, train, test_lists, *a, **k):
        got["compress"] = (train, test_lists, k.get("tune"))
        return real_preset(name, model, train, test_lists, *a, **k)

    monkeypatch.setattr(export_mod, "export_formats", export_formats)
    monkeypatch.setattr(presets, "run_preset", run_preset)
    ck, lg = str(seed1.checkpoint), str(logs)
    assert main(["--no-progress", "export", "--checkpoint", ck, "--logs", lg, "--out", str(tmp_path / "e"),
                 "--validate-lists", "30"]) == 0
    assert main(["--no-progress", "compress", "--preset", "default", "--checkpoint", ck, "--logs", lg,
                 "--out", str(tmp_path / "c"), "--lists", "30"]) == 0
    assert all(np.array_equal(got["export"][k], expected.inputs[k]) for k in expected.inputs)
    c_train, c_test, c_tune = got["compress"]
    assert _sessions(c_test) == test == _sessions(expected) and not _sessions(c_test) & train_valid
    assert _sessions(c_train) == set(split.train) and _sessions(c_tune) == set(split.valid)
    # what the old seed-0 re-split would have called held out is mostly something else
    assert set(SessionSplit.make(split.train + split.valid + split.test, SplitConfig(seed=0)).test) != test


def test_evaluate_checkpoint_and_its_bundle_on_the_test_split(seed1, logs, tmp_path):
    from edge_rerank.api import evaluate, export

    exported = export(seed1, tmp_path, formats=["onnx"], n_validate=20, latency_runs=5)
    on_ck = evaluate(seed1.checkpoint, logs)
    on_bundle = evaluate(exported.bundles["onnx"], logs)
    assert on_ck.test_lists == on_bundle.test_lists == seed1.test_lists
    assert on_ck.model["ndcg@10"] == pytest.approx(seed1.test["ndcg@10"], abs=1e-9)
    assert on_bundle.model["ndcg@10"] == pytest.approx(on_ck.model["ndcg@10"], abs=2e-3)
    assert on_ck.cloud_order == on_bundle.cloud_order == pytest.approx(seed1.test_cloud_order)


def test_other_logs_and_unrecorded_checkpoints_are_refused(seed1, logged_rows, tmp_path, capsys):
    from edge_rerank.api import evaluate, export
    from edge_rerank.cli import main
    from edge_rerank.cloud.logs import rows_to_table
    from edge_rerank.cloud.training.train import NoRecordedSplit, save_checkpoint

    drop = set(seed1.held_out.split.train[:5])
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(rows_to_table([r for r in logged_rows if r.session_id not in drop]), other / "p.parquet")
    with pytest.raises(SplitMismatch, match="5 recorded sessions missing"):
        export(seed1.checkpoint, tmp_path / "x", logs=other)
    with pytest.raises(SplitMismatch):
        evaluate(seed1.checkpoint, other)
    rc = main(["--no-progress", "compress", "--preset", "default", "--checkpoint", str(seed1.checkpoint),
               "--logs", str(other), "--out", str(tmp_path / "c")])
    assert rc == 2 and "refusing to re-split" in capsys.readouterr().err
    assert not (tmp_path / "c" / "bundle").exists()

    old = save_checkpoint(seed1.model, tmp_path / "old.pt", {})  # saved without a split
    with pytest.raises(NoRecordedSplit):
        export(old, tmp_path / "y", logs=other)
