"""`edgecache llm ...`: commands for the LLM workers.

    edgecache llm build                        # the packaged SmolLM2 copy, once
    edgecache llm serve --press snapkv --budget 0.25 --port 8000

torch and Ray are imported only when a command runs, so `edgecache --help` needs neither.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from ..config import read_settings
from ..errors import ConfigError, EdgecacheError
from .protocol import WorkerConfig

APP_NAME = "llm"


def cmd_llm_build(args: argparse.Namespace) -> int:
    from ..home import llm_dir, make_dirs
    from .model import ModelNotAvailableError, build_packaged_model, packaged_model_path

    home = Path(args.home) if args.home else None
    make_dirs(llm_dir(home))  # a home that is not a folder is refused before the slow build
    if not args.force:
        try:
            path = packaged_model_path(home)
        except ModelNotAvailableError:
            pass
        else:
            print(f"already built: {path} (use --force to rebuild)")
            return 0
    build_packaged_model(home)
    return 0


def worker_config(args: argparse.Namespace) -> WorkerConfig:
    """The replica's settings: the --config file's WorkerConfig fields, then the flags given."""
    settings: dict[str, Any] = read_settings(args.config) if args.config else {}
    flags = {
        "model": args.model,
        "press": args.press,
        "budget": args.budget,
        "max_context_tokens": args.max_context_tokens,
        "max_new_tokens": args.max_new_tokens,
        "num_gpus": args.num_gpus,
        "device": args.device,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    return WorkerConfig.from_dict(settings)


def check_serve_args(args: argparse.Namespace, config: WorkerConfig) -> None:
    """Refuse, before Ray starts (tens of seconds), what Serve or the replica would refuse later
    with a traceback. Without --address the replica runs here, on this machine's packages and
    model copy, so the press name and the built model are checked too; a cluster's nodes may
    differ, and their replicas report their own errors."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    if not args.route_prefix.startswith("/"):
        raise ConfigError(f"--route-prefix must start with '/', got {args.route_prefix!r}")
    if args.address is not None:
        return
    from .presses import press_spec

    press_spec(config.press)
    if config.model is None:
        from .model import packaged_model_path

        packaged_model_path()


def _wait_for_stop() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM; both only set an event, so that the caller's
    cleanup runs the same way for either."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # A timed wait: the handlers run between waits, whatever the platform's lock does on EINTR.
    while not stop.wait(1.0):
        pass


def cmd_llm_serve(args: argparse.Namespace) -> int:
    from ..raycluster import connect_ray, is_loopback_host

    config = worker_config(args)
    check_serve_args(args, config)
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise EdgecacheError(
            f"`edgecache llm serve` needs Ray Serve: pip install 'edgecache[serve]' ({exc})"
        ) from None
    from .worker import app

    if not is_loopback_host(args.host):
        logging.warning("listening on %s: put an auth layer in front of the worker", args.host)
    connect_ray(args.address)
    # Ctrl-C while the replica still loads ends the command like Ctrl-C afterwards, without a
    # traceback: the cleanup below runs either way.
    with contextlib.suppress(KeyboardInterrupt):
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            serve.run(app(**config.to_dict()), name=APP_NAME, route_prefix=args.route_prefix)
            host = f"[{args.host}]" if ":" in args.host else args.host
            print(
                f"edgecache llm serving on http://{host}:{args.port}{args.route_prefix} (press "
                f"{config.press}, budget {config.budget}, model {config.model or 'packaged SmolLM2'}); "
                "Ctrl-C stops it",
                flush=True,
            )
            _wait_for_stop()
        finally:
            # A cluster that was joined may serve other applications: only ours is removed there.
            if args.address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            ray.shutdown()
    print("edgecache llm: stopped", flush=True)
    return 0


def add_llm_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `edgecache llm` and its subcommands on the top-level subparsers."""
    llm = sub.add_parser("llm", help="LLM workers: build the packaged SmolLM2 copy, serve a worker")
    lsub = llm.add_subparsers(dest="llm_command", required=True)
    build = lsub.add_parser(
        "build", help="convert the packaged SmolLM2-135M-Instruct GGUF to safetensors in $EDGECACHE_HOME/llm"
    )
    build.add_argument("--home", help="install under this folder instead of $EDGECACHE_HOME")
    build.add_argument("--force", action="store_true", help="rebuild even when a built copy exists")
    build.set_defaults(func=cmd_llm_build)

    serve = lsub.add_parser(
        "serve",
        help="serve the OpenAI-compatible worker on Ray Serve (a local Ray on 127.0.0.1 unless --address)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--route-prefix", default="/", help="URL prefix of the worker (default /)")
    serve.add_argument("--address", help="join this Ray cluster (auto, host:6379) instead of starting one")
    serve.add_argument("--config", help="WorkerConfig fields as .json or .toml; the flags below override it")
    serve.add_argument("--model", help="HF causal-LM folder or hub id (default: the built SmolLM2 copy)")
    serve.add_argument("--press", help="default KV press (default snapkv; full = no compression)")
    serve.add_argument("--budget", type=float, help="fraction of the context's KV cache kept, (0, 1]")
    serve.add_argument("--max-context-tokens", type=int, help="prompt + completion tokens allowed")
    serve.add_argument("--max-new-tokens", type=int, help="the largest max_tokens a request may ask for")
    serve.add_argument("--num-gpus", type=float, help="GPUs of the replica (default 0)")
    serve.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    serve.set_defaults(func=cmd_llm_serve)
    return llm


__all__ = ["add_llm_parser", "check_serve_args", "cmd_llm_build", "cmd_llm_serve", "worker_config"]
