"""`edgecache llm serve`: flags and --config files -> WorkerConfig, and bad input refused before
Ray starts (Ray is never started here)."""

from __future__ import annotations

import pytest

import edgecache.raycluster
from edgecache.cli import build_parser, main
from edgecache.errors import ConfigError, EdgecacheError
from edgecache.llm.cli import check_serve_args, worker_config
from edgecache.llm.protocol import WorkerConfig


def _args(*argv: str):
    return build_parser().parse_args(["llm", "serve", *argv])


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("Ray must not start in unit tests")

    monkeypatch.setattr(edgecache.raycluster, "connect_ray", refuse)


def test_defaults_and_flags_map_onto_worker_config():
    args = _args()
    assert (args.host, args.port, args.route_prefix, args.address) == ("127.0.0.1", 8000, "/", None)
    assert worker_config(args) == WorkerConfig()
    args = _args(
        *("--model", "/models/llama", "--press", "knorm", "--budget", "0.25"),
        *("--max-context-tokens", "2048", "--max-new-tokens", "32", "--num-gpus", "1", "--device", "cuda:1"),
    )
    cfg = worker_config(args)
    assert (cfg.model, cfg.press, cfg.budget, cfg.device) == ("/models/llama", "knorm", 0.25, "cuda:1")
    assert (cfg.max_context_tokens, cfg.max_new_tokens, cfg.num_gpus) == (2048, 32, 1.0)
    # the default max_tokens follows a lower cap
    assert cfg.default_max_tokens == 32


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_config_file_then_flags_on_top(tmp_path, suffix):
    path = tmp_path / f"worker{suffix}"
    if suffix == ".toml":
        path.write_text(
            'press = "streamingllm"\nbudget = 0.3\ntorch_threads = 2\n[press_options]\nn_sink = 8\n'
        )
    else:
        path.write_text(
            '{"press": "streamingllm", "budget": 0.3, "torch_threads": 2, "press_options": {"n_sink": 8}}'
        )
    cfg = worker_config(_args("--config", str(path), "--budget", "0.5"))
    assert (cfg.press, cfg.budget, cfg.torch_threads, cfg.press_options) == (
        "streamingllm",
        0.5,
        2,
        {"n_sink": 8},
    )


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (("--budget", "1.5"), "budget"),
        (("--budget", "0"), "budget"),
        (("--max-new-tokens", "0"), "max_new_tokens"),
        (("--num-gpus", "-1"), "num_gpus"),
        (("--port", "70000"), "--port"),
        (("--route-prefix", "llm"), "--route-prefix"),
    ],
)
def test_bad_flags_are_config_errors(argv, match):
    args = _args(*argv)
    with pytest.raises(ConfigError, match=match):
        check_serve_args(args, worker_config(args))


def test_bad_config_files(tmp_path):
    unknown = tmp_path / "w.json"
    unknown.write_text('{"budgte": 0.5}')
    with pytest.raises(ConfigError, match="unknown WorkerConfig fields"):
        worker_config(_args("--config", str(unknown)))
    broken = tmp_path / "w.toml"
    broken.write_text("press = ")
    with pytest.raises(EdgecacheError, match="cannot read config"):
        worker_config(_args("--config", str(broken)))
    with pytest.raises(EdgecacheError, match="cannot read config"):
        worker_config(_args("--config", str(tmp_path / "missing.toml")))


def test_local_run_checks_press_and_model(tmp_path, monkeypatch):
    pytest.importorskip("kvpress")
    monkeypatch.setenv("EDGECACHE_HOME", str(tmp_path))
    args = _args("--press", "nosuchpress")
    with pytest.raises(ConfigError, match="unknown press 'nosuchpress'"):
        check_serve_args(args, worker_config(args))
    args = _args()
    with pytest.raises(EdgecacheError, match="edgecache llm build"):
        check_serve_args(args, worker_config(args))
    # joining a cluster: its nodes have their own packages and model copy
    args = _args("--press", "nosuchpress", "--address", "auto")
    check_serve_args(args, worker_config(args))


def test_main_reports_bad_flags_without_starting_ray(capsys):
    assert main(["llm", "serve", "--budget", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgecache: error: ") and "budget" in err and "Traceback" not in err
