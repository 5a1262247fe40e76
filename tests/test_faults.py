"""The device's fault log: each reason kind warned once, counted always; strict mode raises."""

import logging

import pytest

from edge_rerank.device_sdk.faults import DeviceFault, FaultLog


def test_each_kind_is_warned_once_and_counted(caplog):
    faults = FaultLog(logging.getLogger("edge_rerank.test_faults"))
    with caplog.at_level(logging.DEBUG, logger="edge_rerank.test_faults"):
        for i in range(3):
            assert faults.record(f"inference: boom {i}") == f"inference: boom {i}"
        faults.record("features: bad")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(" (")[0] for r in warnings] == ["inference: boom 0", "features: bad"]
    assert faults.counts == {"inference": 3, "features": 1} and faults.last == "features: bad"


def test_strict_raises_the_reason():
    faults = FaultLog(logging.getLogger("x"), strict=True)
    with pytest.raises(DeviceFault) as e:
        faults.record("bad_manifest: version is not a string")
    assert e.value.kind == "bad_manifest" and "not a string" in str(e.value)
