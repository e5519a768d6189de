import math

import pytest

from edgecache import CacheConfig, ConfigError


def test_defaults_are_valid_and_round_trip():
    cfg = CacheConfig()
    assert CacheConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"threshold": 1.5},
        {"threshold": "0.8"},
        {"context_threshold": -2},
        {"ttl_seconds": 0},
        {"ttl_seconds": math.inf},
        {"dtype": "i4"},
        {"top_k": 0},
        {"connectivity": True},
        {"connectivity": 1_000_000_000},
        {"max_entries": 0},
        {"max_entries": True},
        {"threshold": True},
        {"ttl_seconds": True},
        {"projection": "bogus"},
        {"projection": 5},
    ],
)
def test_invalid_values_raise_config_error(bad):
    with pytest.raises(ConfigError):
        CacheConfig(**bad)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="treshold"):
        CacheConfig.from_dict({"treshold": 0.5})


def test_from_dict_needs_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        CacheConfig.from_dict([1, 2])
