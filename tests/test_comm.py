from __future__ import annotations

import pytest

from dreamshard.backends.comm import AllToAllModel
from dreamshard.errors import InputError

MODEL = AllToAllModel(latency_ms=0.5, bandwidth_gbps=1.0, source="test")


def test_hand_computed_two_devices() -> None:
    # B=8, widths 16 and 48. dev0 sends 8*16/2=64 values, receives 8/2*48=192;
    # dev1 sends 192, receives 64. Slowest moves 192 values * 4 bytes = 768 bytes.
    # 1 GB/s = 1e6 bytes per ms.
    assert MODEL.time_ms([16, 48], batch_size=8) == pytest.approx(0.5 + 768 / 1e6)


def test_one_device_needs_no_communication() -> None:
    assert MODEL.time_ms([128], batch_size=4096) == 0.0


def test_more_width_costs_more() -> None:
    assert MODEL.time_ms([64, 64], 4096) > MODEL.time_ms([16, 16], 4096)


@pytest.mark.parametrize(
    ("latency", "bandwidth", "volume", "part"),
    [
        (0.1, 0.0, "max", "bandwidth_gbps must be a finite number > 0, got 0.0"),
        (0.1, float("nan"), "max", "bandwidth_gbps must be a finite number > 0, got nan"),
        (-0.1, 1.0, "max", "latency_ms must be a finite number >= 0, got -0.1"),
        (0.1, 1.0, "min", "volume must be one of max, sum, got 'min'"),
    ],
)
def test_unusable_models_are_refused(
    latency: float, bandwidth: float, volume: str, part: str
) -> None:
    with pytest.raises(InputError) as caught:
        AllToAllModel(latency_ms=latency, bandwidth_gbps=bandwidth, source="test", volume=volume)
    assert str(caught.value) == f"all-to-all {part}"
