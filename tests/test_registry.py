from __future__ import annotations

import pytest

from dreamshard.errors import InputError
from dreamshard.placers.registry import (
    BASELINE_PLACERS,
    COMPARISON_PLACERS,
    LEARNED_PLACER,
    PLACERS,
    PlacerKind,
    PlacerOptions,
    is_baseline,
    kind_of,
    make_placer,
    spends_measurements,
)


def test_kinds_of_the_registered_placers() -> None:
    assert {name: entry.kind for name, entry in PLACERS.items()} == {
        "random": PlacerKind.RULE,
        "size": PlacerKind.RULE,
        "dim": PlacerKind.RULE,
        "lookup": PlacerKind.RULE,
        "size-lookup": PlacerKind.RULE,
        "dreamshard": PlacerKind.LEARNED,
        "torchrec": PlacerKind.EXTERNAL,
        "torchrec-all": PlacerKind.EXTERNAL,
        "rnn": PlacerKind.MEASURED_SEARCH,
        "oracle": PlacerKind.REFERENCE,
    }


def test_default_lists_come_from_the_kinds() -> None:
    assert BASELINE_PLACERS == ("random", "size", "dim", "lookup", "size-lookup")
    assert (*BASELINE_PLACERS, "torchrec") == COMPARISON_PLACERS
    assert LEARNED_PLACER in PLACERS


@pytest.mark.parametrize(
    ("name", "baseline", "measures"),
    [
        ("size-lookup", True, False),
        ("torchrec", True, False),
        ("rnn", True, True),
        ("dreamshard", False, False),
        ("dreamshard@2dev", False, False),
        ("dreamshard-k32", False, False),  # a benchmark's own variant: unknown, no baseline
        ("oracle", False, False),  # a yardstick, not a baseline
    ],
)
def test_baselines_and_measuring_placers(name: str, baseline: bool, measures: bool) -> None:
    assert is_baseline(name) is baseline
    assert spends_measurements(name) is measures


def test_kind_of_variant_and_unknown() -> None:
    assert kind_of("dreamshard@4dev") is PlacerKind.LEARNED
    assert kind_of("best") is None


def test_every_rule_builds_without_options() -> None:
    for name in BASELINE_PLACERS:
        assert make_placer(name).name == name


def test_placers_that_need_more_say_what() -> None:
    with pytest.raises(InputError, match=r"no model\.pt"):
        make_placer("dreamshard", PlacerOptions(model_dir="/nonexistent"))
    with pytest.raises(InputError, match="needs a backend"):
        make_placer("oracle", PlacerOptions())
    with pytest.raises(InputError, match="needs a cost backend"):
        make_placer("rnn", PlacerOptions())
