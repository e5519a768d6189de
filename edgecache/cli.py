"""The `edgecache` command: serve, model build/fit-projection, eval, bench."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
from pathlib import Path

from .config import DTYPES, CacheConfig, read_settings
from .errors import EdgecacheError
from .home import edgecache_home
from .raycluster import is_loopback_host

DEFAULT_RESULTS = Path("benchmarks/results")


def load_config(path: str | None) -> CacheConfig:
    return CacheConfig.from_dict(read_settings(path)) if path else CacheConfig()


def _store_dir(arg: str | None) -> Path:
    return Path(arg) if arg else edgecache_home() / "caches"


def cmd_serve(args: argparse.Namespace) -> int:
    from .cache import SemanticCache
    from .embedder import shared_embedder
    from .load import BackendMonitor
    from .proxy import ProxySettings, Upstream
    from .registry import CacheRegistry
    from .server import CacheServer
    from .stores import LocalFolderStore

    # Everything checked in moments comes first: loading the encoder takes seconds.
    config = load_config(args.config)
    store_dir = _store_dir(args.store)
    try:
        load = BackendMonitor(*args.backend_latency) if args.backend_latency else BackendMonitor()
    except ValueError as exc:
        raise EdgecacheError(f"--backend-latency: {exc}") from exc
    upstream = None
    if args.upstream_url:
        settings = ProxySettings(
            args.upstream_url, os.environ.get("EDGECACHE_UPSTREAM_API_KEY"), args.max_temperature
        )
        upstream = Upstream(settings, monitor=load)
    stores = [LocalFolderStore(store_dir)] + ([LocalFolderStore(Path(args.bodies))] if args.bodies else [])
    embedder = shared_embedder(config.projection, threads=config.encoder_threads)
    registry = CacheRegistry(
        stores[0],
        config,
        embedder,
        max_loaded=args.max_users,
        bodies=stores[1] if args.bodies else None,
        load=load,
        refresh_seconds=args.refresh_seconds,
    )
    # A configuration no cache can be built with fails now, not on every request.
    SemanticCache("edgecache-startup-check", config=config, embedder=embedder)
    try:
        server = CacheServer(
            registry,
            args.host,
            args.port,
            user_header=args.user_header,
            flush_seconds=args.flush_seconds,
            upstream=upstream,
        )
    except OSError as exc:
        raise EdgecacheError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    host, port = server.address
    if not is_loopback_host(host):
        logging.warning("listening on %s: put an auth layer that sets %s in front", host, args.user_header)
    print(
        f"edgecache serving on http://{host}:{port} (store {store_dir}, "
        f"user header {args.user_header}, model {embedder.encoder.fingerprint[:12]}, "
        f"projection {embedder.projection.name}: vectors {embedder.fingerprint[:12]})",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown_async())
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    except (OSError, EdgecacheError) as exc:  # the last flush, at shutdown: logged per user
        raise EdgecacheError(
            f"stopped, but the last save failed ({server.service.save_error}); changes made since"
            " the last successful flush were not written"
        ) from exc
    return 0


def cmd_model_build(args: argparse.Namespace) -> int:
    from .modelbuild import build_model

    built = build_model(recipe=args.recipe, keep_fp32=args.keep_fp32)
    print(
        f"built {built.path} (sha256 {built.sha256[:16]}, recipe {built.recipe}, "
        f"probe cosine to fp32 min {built.probe_min_cosine:.4f} mean {built.probe_mean_cosine:.4f})"
    )
    return 0


def cmd_fit_projection(args: argparse.Namespace) -> int:
    from .evalrun import qqp_vectors
    from .projection import fit_pca, save_shipped
    from .projection_fit import fit_learned

    data = qqp_vectors()
    width = data.matrix("train").shape[1]
    if max(args.dims) > width:  # before any is fitted: a bad one last must not leave the others half done
        raise SystemExit(f"edgecache: --dims must be at most the encoder's {width}, got {max(args.dims)}")
    assets = Path(__file__).parent / "assets"
    for dim in args.dims:
        if args.kind == "pca":
            proj = fit_pca(data.matrix("train"), dim)
        else:
            proj = fit_learned(
                data.pair_arrays("train"),
                data.pair_arrays("validation"),
                data.matrix("train"),
                dim,
                epochs=args.epochs,
            )
        proj.info["fitted_on_encoder"] = data.fingerprint
        print(f"wrote {save_shipped(proj, assets)} ({proj.info})")
    return 0


def cmd_snapshot_reembed(args: argparse.Namespace) -> int:
    from .errors import ConflictError, SnapshotError
    from .reembed import reembed_snapshot
    from .stores import LocalFolderStore, user_key

    config = load_config(args.config)
    store_dir = _store_dir(args.store)
    if not store_dir.is_dir():
        raise EdgecacheError(f"no snapshot folder at {store_dir}")
    store = LocalFolderStore(store_dir)
    width = len(user_key("x"))  # snapshots are stored under user keys; other files are not ours
    keys = sorted(
        p.name for p in store_dir.iterdir() if p.is_file() and len(p.name) == width and p.name.isalnum()
    )
    failed = 0
    for n, key in enumerate(keys, 1):
        found = store.get_versioned(key)
        if found is None:
            continue
        data, version = found
        tag = f"[{n}/{len(keys)}] {key[:12]}"

        def show(done: int, total: int, key: str = key) -> None:
            print(f"\r  {key[:12]}: encoding {done}/{total} texts", end="", file=sys.stderr, flush=True)

        try:
            result = reembed_snapshot(data, config, progress=show)
        except SnapshotError as exc:
            failed += 1
            print(f"{tag}: left as it is, unreadable: {exc}")
            continue
        except EdgecacheError as exc:  # one snapshot's trouble must not stop the others
            failed += 1
            print(f"\n{tag}: left as it is, cannot be re-encoded: {exc}")
            continue
        if result is None:
            print(f"{tag}: current")
            continue
        print("", file=sys.stderr)
        aside = f"{key}.pre-{result.previous_fingerprint[:12]}"
        store.put(aside, data)
        try:
            store.put_if(key, result.data, version)
        except ConflictError:
            failed += 1
            print(f"{tag}: written by another process meanwhile; run again")
            continue
        notes = [f"{result.entries} entries encoded again"]
        if result.dropped:
            notes.append(f"{len(result.dropped)} follow-ups without their context's text left out")
        if result.clipped_contexts:
            notes.append(f"{result.clipped_contexts} from a clipped context")
        print(f"{tag}: {', '.join(notes)}; the original is kept as {aside}")
    print(f"{len(keys)} snapshots in {store_dir}, {failed} left as they were")
    return 1 if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evalrun import run_eval

    settings = [tuple(s.split(":")) for s in args.settings]
    results = run_eval(Path(args.out), settings, with_compression=not args.skip_compression)
    for s in results["settings"]:
        pw, rt = s["pairwise"]["test_at_validation_threshold"], s["retrieval"]["test_at_validation_threshold"]
        for label, key in (
            ("half-duplicate sets, threshold as MeanCache picks it", "test_at_whole_validation_threshold"),
            ("half-duplicate sets, threshold from half-duplicate validation", "test_at_validation_threshold"),
        ):
            half = {k: v[key] for k, v in s["balanced"].items()}
            setting = f"{s['projection']} {s['dtype']}{' +guards' if s['guards'] else ''}"
            print(
                f"{setting:>28}  {label}: pairwise F1 {half['pairwise']['f1']:.3f}"
                f" P {half['pairwise']['precision']:.3f} @{half['pairwise']['threshold']:.2f},"
                f" retrieval F1 {half['retrieval']['f1']:.3f} P {half['retrieval']['precision']:.3f}"
                f" @{half['retrieval']['threshold']:.2f}"
            )
        print(
            f"{'':>28}  whole split: pairwise F1 {pw['f1']:.3f} P {pw['precision']:.3f}"
            f" @{pw['threshold']:.2f} | retrieval F1 {rt['f1']:.3f} P {rt['precision']:.3f}"
            f" R {rt['recall']:.3f} @{rt['threshold']:.2f}"
            f" (lenient P {s['retrieval']['test_lenient_precision_at_validation_threshold']:.3f})"
        )
    for name, result in results["contextual"].items():
        if name == "tune_sweep":
            continue
        parts = {k: v for k, v in result.items() if k in ("pooled", "new_claude", "same_topic_pairs")}
        for part, c in (parts or {"": result}).items():
            scored = f"F1 {c['f1']:.3f} P {c['precision']:.3f} R {c['recall']:.3f} " if "f1" in c else ""
            if "precision_ci95" in c:
                low, high = c["precision_ci95"]
                scored += f"(P 95% CI {low:.3f}-{high:.3f}) "
            if "meancache_f1" in c:
                mc_f1, mc_p = c["meancache_f1"], c["meancache_precision"]
                scored += f"(MeanCache negatives: F1 {mc_f1:.3f} P {mc_p:.3f}) "
            hits = f"false hits {c['false_hits']} of {c['negatives']}" if "false_hits" in c else ""
            print(f"contextual {name} {part}: {scored}{hits}".rstrip())
    print(f"wrote {Path(args.out) / 'eval.json'} and eval_pr.png")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(Path(args.out), sizes=args.sizes, queries=args.queries, gptcache_python=args.gptcache_python)
    return 0


def _number(kind: type, low: float, what: str):
    """An argparse type: a finite `kind` >= low (`what` says so in the error)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


def _port(text: str) -> int:
    port = _number(int, 0, "a port number (0-65535)")(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return port


def _host(text: str) -> str:
    # An empty host would bind every interface, the opposite of what leaving it out does.
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty host would listen on every interface; name one")
    return text


# Headers that cannot carry the user id: hop-by-hop ones a proxy consumes or rewrites, ones
# this server reads itself, and standard ones any client sets and gateways pass on as sent.
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade",
        "Host", "Content-Length", "Content-Type", "Cache-Control", "Expect",
        "Cookie", "User-Agent", "Accept", "Origin", "Referer",
    )
)  # fmt: skip


def _header_name(text: str) -> str:
    if not text or not all(c.isascii() and (c.isalnum() or c in "-_") for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an HTTP header name")
    if text.lower() in RESERVED_HEADERS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is a standard request header, not one an auth layer sets for the user id"
        )
    return text


def _setting(text: str) -> str:
    """An eval setting: projection:dtype[:guards], projection one `evalrun.projection_for` takes."""
    from .projection import shipped_names

    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[1] not in DTYPES or parts[2:] not in ([], ["guards"]):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not projection:dtype[:guards] (dtype one of {', '.join(DTYPES)})"
        )
    name, shipped = parts[0], shipped_names()
    if name.startswith("pca-"):
        dim = name.removeprefix("pca-")
        if not (dim.isascii() and dim.isdigit() and int(dim) > 0):
            raise argparse.ArgumentTypeError(f"{text!r}: pca-N needs a positive whole number N")
    elif name not in shipped:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown projection {name!r}; use none, pca-N (fitted here) or a shipped one: "
            f"{', '.join(n for n in shipped if n != 'none')}"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecache", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the local HTTP service on 127.0.0.1")
    serve.add_argument("--host", type=_host, default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8080, help="0: any free port")
    serve.add_argument("--store", help="snapshot folder (default: $EDGECACHE_HOME/caches)")
    serve.add_argument("--config", help="CacheConfig as .json or .toml")
    serve.add_argument("--user-header", type=_header_name, default="X-Edgecache-User")
    serve.add_argument(
        "--max-users", type=_number(int, 1, "a positive integer"), default=256, help="caches kept in memory"
    )
    serve.add_argument(
        "--flush-seconds", type=_number(float, 0.01, "a number of seconds >= 0.01"), default=5.0
    )
    serve.add_argument(
        "--refresh-seconds",
        type=_number(float, 0.0, "a number of seconds >= 0"),
        help="several workers sharing --store: a user's cache last read or written longer ago "
        "than this re-reads the store before the request, taking in the other workers' inserts "
        "and deletes (default: off, for one worker per store)",
    )
    serve.add_argument(
        "--bodies",
        help="folder for response bodies (hybrid layout: only index and metadata in memory and "
        "snapshots; a body is read on a hit). Default: bodies inline in snapshots",
    )
    serve.add_argument(
        "--upstream-url",
        help="OpenAI-compatible API (e.g. https://api.openai.com/v1) that POST /v1/chat/completions "
        "forwards misses to; its key is read from EDGECACHE_UPSTREAM_API_KEY",
    )
    serve.add_argument(
        "--max-temperature",
        type=_number(float, 0.0, "a temperature >= 0"),
        default=0.7,
        help="chat requests asking for a higher temperature bypass the cache (default 0.7)",
    )
    serve.add_argument(
        "--backend-latency",
        type=_number(float, 0.0, "a number of seconds >= 0"),
        nargs=2,
        metavar=("NORMAL_S", "OVERLOADED_S"),
        help="backend latency (seconds) reported to /v1/backend that counts as normal and as "
        "overloaded for load adaptation (default 2 10)",
    )
    serve.set_defaults(func=cmd_serve)

    snap = sub.add_parser("snapshot", help="work on stored snapshots")
    ssub = snap.add_subparsers(dest="snapshot_command", required=True)
    reembed = ssub.add_parser(
        "reembed",
        help="encode again, from their texts, the snapshots another encoder build or projection "
        "wrote (after an upgrade); each original is kept as <key>.pre-<fingerprint>",
    )
    reembed.add_argument("--store", help="snapshot folder (default: $EDGECACHE_HOME/caches)")
    reembed.add_argument("--config", help="the CacheConfig the caches are served with (.json or .toml)")
    reembed.set_defaults(func=cmd_snapshot_reembed)

    model = sub.add_parser("model", help="build the ONNX encoder / fit projections")
    msub = model.add_subparsers(dest="model_command", required=True)
    build = msub.add_parser("build", help="export + quantize all-MiniLM-L6-v2 into $EDGECACHE_HOME")
    from .modelbuild import DEFAULT_RECIPE, RECIPES

    build.add_argument("--recipe", choices=RECIPES, default=DEFAULT_RECIPE)
    build.add_argument("--keep-fp32", action="store_true", help="keep the fp32 graph beside int8")
    build.set_defaults(func=cmd_model_build)
    fit = msub.add_parser("fit-projection", help="fit a projection on the QQP training split")
    fit.add_argument("--kind", choices=("pca", "learned"), default="learned")
    fit.add_argument("--dims", type=_number(int, 1, "a positive integer"), nargs="+", default=[64])
    fit.add_argument("--epochs", type=_number(int, 1, "a positive integer"), default=20)
    fit.set_defaults(func=cmd_fit_projection)

    ev = sub.add_parser("eval", help="QQP pairwise + retrieval and contextual evaluation")
    ev.add_argument("--out", default=str(DEFAULT_RESULTS))
    ev.add_argument(
        "--settings",
        type=_setting,
        nargs="+",
        default=["none:f32", "pca-64:i8", "learned-64:i8", "learned-64:i8:guards"],
        help="projection:dtype[:guards] settings",
    )
    ev.add_argument("--skip-compression", action="store_true")
    ev.set_defaults(func=cmd_eval)

    bench = sub.add_parser("bench", help="latency, throughput, bytes, RSS, cold start (+ GPTCache)")
    bench.add_argument("--out", default=str(DEFAULT_RESULTS))
    bench.add_argument(
        "--sizes", type=_number(int, 1, "a positive integer"), nargs="+", default=[1_000, 10_000, 100_000]
    )
    bench.add_argument("--queries", type=_number(int, 1, "a positive integer"), default=1_000)
    bench.add_argument("--gptcache-python", help="python of a venv with gptcache, for the side-by-side")
    bench.set_defaults(func=cmd_bench)
    from .llm.cli import add_llm_parser

    add_llm_parser(sub)
    from .adapters.cli import add_adapters_parser

    add_adapters_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except EdgecacheError as exc:
        print(f"edgecache: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
