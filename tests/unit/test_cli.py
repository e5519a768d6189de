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


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "-1"],
        ["serve", "--port", "70000"],
        ["serve", "--max-users", "0"],
        ["serve", "--flush-seconds", "0"],
        ["serve", "--flush-seconds", "nan"],
        ["serve", "--user-header", ""],
        ["serve", "--backend-latency", "nan", "5"],
        ["bench", "--sizes", "-5"],
        ["bench", "--queries", "0"],
        ["eval", "--settings", "bogus"],
        ["eval", "--settings", "learned-64:i4"],
        ["serve", "--max-temperature", "nan"],
        ["serve", "--max-temperature", "-1"],
        ["model", "fit-projection", "--epochs", "-3"],
        ["model", "fit-projection", "--epochs", "0"],
        ["model", "fit-projection", "--dims", "64", "-7"],
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2 and "error: argument" in capsys.readouterr().err


def run_serve(argv, monkeypatch, embedder):
    """`edgecache serve` up to the point it would serve, with the hashing embedder."""
    import edgecache.embedder
    from edgecache.cli import main

    monkeypatch.setattr(edgecache.embedder, "shared_embedder", lambda *a, **k: embedder)
    return main(["serve", *argv])


def test_serve_setup_errors_are_one_line(tmp_path, monkeypatch, capsys, embedder):
    import socket

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        cases = {
            ("--store", str(a_file)): "as a store folder",
            ("--port", port, "--store", str(tmp_path / "s")): "cannot listen",
            ("--backend-latency", "10", "2", "--store", str(tmp_path / "s")): "--backend-latency",
        }
        for argv, message in cases.items():
            assert run_serve(list(argv), monkeypatch, embedder) == 2
            assert message in capsys.readouterr().err
    seedless = tmp_path / "cache.toml"
    seedless.write_text("[policy.categories.legal]\nthreshold = 0.9\n")
    assert run_serve(["--config", str(seedless), "--store", str(tmp_path / "s")], monkeypatch, embedder) == 2
    assert "seeds" in capsys.readouterr().err
