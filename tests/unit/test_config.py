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
        {"max_entries": 0},
    ],
)
def test_invalid_values_raise_config_error(bad):
    with pytest.raises(ConfigError):
        CacheConfig(**bad)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="treshold"):
        CacheConfig.from_dict({"treshold": 0.5})
