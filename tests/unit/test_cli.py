import pytest

from edgecache import CacheConfig, ConfigError, EdgecacheError, LocalFolderStore
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
        ["eval", "--settings", "bogus:i8"],
        ["eval", "--settings", "pca-abc:i8"],
        ["eval", "--settings", "pca-0:i8"],
        ["eval", "--settings", "pca--5:i8"],
        ["eval", "--settings", "learned-128:i8"],
        ["serve", "--host", ""],
        ["serve", "--host", " "],
        ["serve", "--user-header", "Host"],
        ["serve", "--user-header", "content-length"],
        ["serve", "--user-header", "Content-Type"],
        ["serve", "--user-header", "Transfer-Encoding"],
        ["serve", "--user-header", "Connection"],
        ["serve", "--user-header", "Cookie"],
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


def test_eval_settings_take_every_projection_eval_can_build():
    settings = ["none:f32", "pca-48:i8", "pca-128:f16", "learned-64:i8:guards"]
    assert build_parser().parse_args(["eval", "--settings", *settings]).settings == settings
    args = build_parser().parse_args(["serve", "--user-header", "X-Forwarded-User"])
    assert args.user_header == "X-Forwarded-User"


def test_serve_checks_its_cheap_arguments_before_loading_the_encoder(tmp_path, monkeypatch, capsys):
    import edgecache.embedder
    from edgecache.cli import main

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the arguments were checked")

    monkeypatch.setattr(edgecache.embedder, "shared_embedder", no_encoder)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    store = str(tmp_path / "s")
    cases = {
        ("--backend-latency", "10", "2", "--store", store): "--backend-latency",
        ("--upstream-url", "ftp://example.com", "--store", store): "upstream URL",
        ("--store", str(a_file)): "as a store folder",
    }
    for argv, message in cases.items():
        assert main(["serve", *argv]) == 2
        assert message in capsys.readouterr().err


def test_serve_refuses_a_store_folder_it_cannot_write(tmp_path, monkeypatch, capsys, embedder):
    from tests.helpers import refuse_new_files

    refuse_new_files(monkeypatch)
    assert run_serve(["--store", str(tmp_path)], monkeypatch, embedder) == 2
    err = capsys.readouterr().err
    assert f"cannot use {tmp_path} as a store folder: Read-only file system" in err
    assert "Traceback" not in err


def test_serve_says_when_its_last_save_fails(tmp_path, monkeypatch, capsys, embedder):
    import errno
    from types import SimpleNamespace

    from edgecache.server import CacheServer

    def serve_then_lose_the_store(self):
        with self.registry.use("u", mutate=True) as cache:
            cache.insert("what is the capital of peru", "Lima")

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(LocalFolderStore, "put_if", read_only)
        self.close()  # as serve_forever does when SIGTERM stops it

    monkeypatch.setattr(CacheServer, "serve_forever", serve_then_lose_the_store)
    # What serve prints at start: the model and projection the embedder came from.
    embedder.encoder, embedder.projection = SimpleNamespace(fingerprint="model"), SimpleNamespace(name="none")
    assert run_serve(["--store", str(tmp_path), "--port", "0"], monkeypatch, embedder) == 2
    err = capsys.readouterr().err
    assert "the last save failed (OSError: Read-only file system)" in err and "were not written" in err


@pytest.mark.parametrize(
    "argv", [["eval"], ["bench"], ["model", "fit-projection"]], ids=["eval", "bench", "fit-projection"]
)
def test_missing_evaluation_data_is_named_with_the_variable_to_set(argv, tmp_path, monkeypatch, capsys):
    from edgecache.cli import main

    monkeypatch.setenv("EDGECACHE_DATA", str(tmp_path / "nowhere"))
    extra = ["--out", str(tmp_path / "out")] if argv[0] in ("eval", "bench") else []
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "paraphrase" / "qqp_dev.jsonl.gz") in err
    assert "EDGECACHE_DATA" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def empty_data(tmp_path, monkeypatch):
    """EDGECACHE_DATA pointing at empty files where eval and bench look for their data."""
    from edgecache.evaldata import CONTEXTUAL_SETS

    for name in ["paraphrase/qqp_dev.jsonl.gz", *(f"contextual/meancache_{s}.json" for s in CONTEXTUAL_SETS)]:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_text("")
    monkeypatch.setenv("EDGECACHE_DATA", str(tmp_path / "data"))


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_an_out_folder_that_cannot_be_made_is_refused_before_the_run(
    command, tmp_path, monkeypatch, capsys, empty_data
):
    import edgecache.bench
    import edgecache.evalrun
    from edgecache.cli import main

    def no_run(*args, **kwargs):
        raise AssertionError("the run started before --out was checked")

    monkeypatch.setattr(edgecache.evalrun, "load_qqp", no_run)
    monkeypatch.setattr(edgecache.bench, "load_qqp", no_run)
    a_file = tmp_path / "results"
    a_file.write_text("x")
    assert main([command, "--out", str(a_file)]) == 2
    assert f"cannot write results to {a_file}" in capsys.readouterr().err
    assert main([command, "--out", str(a_file / "sub")]) == 2
    assert "cannot write results" in capsys.readouterr().err


def _splits(questions: int):
    """QQP-like splits with `questions` first and as many second questions, all distinct."""
    from edgecache.evaldata import Pair

    return {"test": [Pair(f"first {i}", f"second {i}", 0) for i in range(questions)]}


def test_bench_refuses_sizes_and_queries_the_data_cannot_fill_before_encoding(
    monkeypatch, tmp_path, capsys, empty_data
):
    import edgecache.bench
    from edgecache.cli import main

    def no_encoder(*args, **kwargs):
        raise AssertionError("encoding started before the counts were checked")

    monkeypatch.setattr(edgecache.bench, "load_qqp", lambda: _splits(3000))
    monkeypatch.setattr(edgecache.bench, "shared_embedder", no_encoder)
    out = ["--out", str(tmp_path / "out")]
    assert main(["bench", "--sizes", "10", "--queries", "100000", *out]) == 2
    assert "--queries 100000 with 1 sizes needs 202500 QQP questions" in capsys.readouterr().err
    assert main(["bench", "--sizes", "10", "3101", "--queries", "100", *out]) == 2
    err = capsys.readouterr().err
    assert "--sizes 3101 is more than the 3100 distinct QQP questions" in err and "Traceback" not in err


def test_bench_texts_never_reuse_a_question():
    from edgecache.bench import bench_texts

    texts = bench_texts(_splits(3000), [10, 3000], queries=100)
    used = [t for n in (10, 3000) for t in texts.query_sets[n] + texts.embed_sets[n]]
    used += texts.insert_texts + texts.bulk_texts
    assert len(used) == len(set(used)) == 400 + 2500
    assert not set(used) & set(texts.pool) and len(texts.pool) == 3000 + 100
    assert all(len(texts.query_sets[n]) == 100 for n in (10, 3000))


def test_a_home_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    from edgecache.cli import main

    a_file = tmp_path / "home"
    a_file.write_text("x")
    monkeypatch.setenv("EDGECACHE_HOME", str(a_file))
    assert main(["model", "build"]) == 2
    err = capsys.readouterr().err
    assert f"cannot create the folder {a_file / 'models'}" in err and "EDGECACHE_HOME" in err
    assert main(["llm", "build", "--home", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert f"cannot create the folder {a_file / 'llm'}" in err and "Traceback" not in err
