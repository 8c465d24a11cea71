"""Configuration problems in people's words: the flag to change, another dataset, sizes that
cannot exist."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import TINY

from spacenet_jax.core.config import ConfigError, SpaceNetConfig, describe_differences


def test_differences_name_the_flag_and_the_dataset():
    saved = TINY.to_dict()
    other = dataclasses.replace(TINY, learning_rate=0.07, input_mean=0.1307, input_std=0.3081)
    items = describe_differences(saved, other.to_dict(), "checkpoint")
    assert items[0].startswith("the data (its image shape, pixel normalisation or task classes)")
    assert "learning_rate (--lr): checkpoint 0.05, this run 0.07" in items
    assert not any("input_mean" in i or "input_std" in i for i in items)  # no flag sets them
    assert describe_differences(saved, TINY.to_dict()) == []


def test_a_layer_too_large_for_int32_positions_is_refused():
    with pytest.raises(ConfigError, match=r"weight matrix 1 would hold 2,352,000,000 weights.*"
                       r"int32 positions.*choose smaller layer sizes"):
        SpaceNetConfig(layer_sizes=(784, 3_000_000, 400, 10))
    SpaceNetConfig(layer_sizes=(784, 4000, 400, 10))  # large but fine
