import pytest

from edgecache import CacheConfig, ConfigError, EdgecacheError
from edgecache.cli import build_parser, load_config


def test_config_from_toml_and_json(tmp_path):
    toml = tmp_path / "cache.toml"
    toml.write_text('threshold = 0.85\nttl_seconds = 3600\ndtype = "f16"\n')
    assert load_config(str(toml)) == CacheConfig(threshold=0.85, ttl_seconds=3600, dtype="f16")
    js = tmp_path / "cache.json"
    js.write_text('{"max_entries": 10}')
    assert load_config(str(js)).max_entries == 10
    assert load_config(None) == CacheConfig()


@pytest.mark.parametrize(
    ("text", "error"),
    [("threshold = 2", ConfigError), ("treshold = 0.8", ConfigError), ("not toml [", EdgecacheError)],
)
def test_bad_config_files_name_the_problem(tmp_path, text, error):
    path = tmp_path / "cache.toml"
    path.write_text(text)
    with pytest.raises(error):
        load_config(str(path))
    with pytest.raises(EdgecacheError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"))


def test_serve_defaults_to_loopback():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.user_header) == ("127.0.0.1", 8080, "X-Edgecache-User")


def test_policy_from_a_toml_file(tmp_path):
    path = tmp_path / "cache.toml"
    path.write_text(
        "threshold = 0.8\n"
        "[policy]\nfalse_hit_target = 0.02\n"
        "[policy.categories.time_sensitive]\nttl_seconds = 600\nmax_entries = 5000\n"
        "[policy.categories.legal]\n"
        'seeds = ["Legal questions about laws", "is it legal to record a call"]\nthreshold = 0.9\n'
    )
    config = load_config(str(path))
    assert config.policy.false_hit_target == 0.02
    assert config.policy.category("time_sensitive").ttl_seconds == 600
    assert config.policy.category("legal").seeds[1] == "is it legal to record a call"
    path.write_text("[policy.categories.code]\neviction = 'fifo'\n")
    with pytest.raises(ConfigError, match="eviction"):
        load_config(str(path))
